"""`callcenter` command line: serve, db, token, staff."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from callcenter.settings import Settings, SettingsError, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(args.config)
    except SettingsError as exc:
        print(f"callcenter: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def cmd_serve(args: argparse.Namespace) -> int:
    from callcenter.server import serve

    settings = _settings(args)
    overrides = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if overrides:
        settings = settings.model_copy(update={"http": settings.http.model_copy(update=overrides)})
    return serve(settings)


def cmd_db(args: argparse.Namespace) -> int:
    from callcenter.db import migrate

    settings = _settings(args)
    if args.db_command == "upgrade":
        migrate.upgrade(settings.database.url)
        print(f"database at revision {migrate.current_revision(settings.database.url)}")
    elif args.db_command == "current":
        print(migrate.current_revision(settings.database.url) or "empty (no migrations applied)")
    elif args.db_command == "revision":
        migrate.revision(settings.database.url, args.message)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from callcenter.db import migrate
    from callcenter.db.engine import create_engine, make_sessionmaker
    from callcenter.service.tokens import Role, TokenStore

    settings = _settings(args)
    migrate.upgrade_if_empty(settings.database.url)

    async def run() -> int:
        engine = create_engine(settings.database)
        store = TokenStore(make_sessionmaker(engine))
        try:
            if args.token_command == "create":
                token = await store.create(Role(args.role), args.name)
                print(token)
                print(f"token for {args.name} (role {args.role}) created; it is shown only this once",
                      file=sys.stderr)
            else:
                count = await store.revoke(args.name)
                print(f"revoked {count} token(s) named {args.name}", file=sys.stderr)
        finally:
            await engine.dispose()
        return 0

    return asyncio.run(run())


def _read_password(prompt: str = "password: ") -> str:
    """From stdin when piped (scripts), else prompted twice without echo."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    first = getpass.getpass(prompt)
    if first != getpass.getpass("repeat password: "):
        print("callcenter: the passwords differ", file=sys.stderr)
        raise SystemExit(2)
    return first


def cmd_staff(args: argparse.Namespace) -> int:
    from callcenter.console.auth import AccountError, StaffStore
    from callcenter.db import migrate
    from callcenter.db.engine import create_engine, make_sessionmaker

    settings = _settings(args)
    migrate.upgrade_if_empty(settings.database.url)
    if args.staff_command == "phone":
        return _staff_phone(args, settings)
    password = _read_password()

    async def run() -> int:
        engine = create_engine(settings.database)
        store = StaffStore(make_sessionmaker(engine), settings.console)
        try:
            account = await store.create_account(args.username, args.name, args.role, password)
        except AccountError as exc:
            print(f"callcenter: {exc}", file=sys.stderr)
            return 2
        finally:
            await engine.dispose()
        print(f"staff account {account.username} ({account.display_name}, {account.role.value}) created",
              file=sys.stderr)
        return 0

    return asyncio.run(run())


def _staff_phone(args: argparse.Namespace, settings: Any) -> int:
    """`staff phone`: the queue member interface whose answered calls pop on this account."""
    from callcenter.db.engine import create_engine, make_sessionmaker
    from callcenter.voice.queue_follow import InterfaceError, set_queue_interface

    async def run() -> int:
        engine = create_engine(settings.database)
        try:
            await set_queue_interface(make_sessionmaker(engine), args.username,
                                      None if args.clear else args.interface)
        except InterfaceError as exc:
            print(f"callcenter: {exc}", file=sys.stderr)
            return 2
        finally:
            await engine.dispose()
        print(f"staff account {args.username}: phone {'cleared' if args.clear else args.interface}",
              file=sys.stderr)
        return 0

    return asyncio.run(run())


def cmd_prompts(args: argparse.Namespace) -> int:
    from callcenter.logs import configure_logging
    from callcenter.prompts import PromptError, build_prompts

    settings = _settings(args)
    configure_logging(settings.logging)  # warnings (converted overrides) go to stderr as log lines
    output = Path(args.output) if args.output else settings.path(settings.prompts.output)
    try:
        report = build_prompts(settings.path(settings.prompts.source), output,
                               overrides_dir=settings.path(settings.prompts.overrides),
                               force=args.force, progress=not args.quiet)
    except PromptError as exc:
        print(f"callcenter: {exc}", file=sys.stderr)
        return 1
    print(report.summary() + (f" (voice {report.voice})" if report.voice else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callcenter", description="Urban-management hotline intake service")
    config_help = "settings file (default config/callcenter.toml)"
    parser.add_argument("--config", help=config_help)
    # Also accepted after the subcommand; SUPPRESS keeps the top-level value when absent there.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the service (HTTP API, FastAGI, SMS)")
    serve.add_argument("--host", help="HTTP listen address (overrides http.host)")
    serve.add_argument("--port", type=int, help="HTTP port, 0 for any free port (overrides http.port)")
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", parents=[common], help="database migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="migrate to the latest schema")
    db_sub.add_parser("current", help="print the schema revision")
    revision = db_sub.add_parser("revision", help="autogenerate a migration (developers)")
    revision.add_argument("-m", "--message", required=True)
    db.set_defaults(func=cmd_db)

    token = sub.add_parser("token", parents=[common], help="API bearer tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token and print it once")
    create.add_argument("--role", required=True, choices=["staff", "platform", "gateway", "admin"])
    create.add_argument("--name", required=True)
    revoke = token_sub.add_parser("revoke", help="revoke every token with this name")
    revoke.add_argument("--name", required=True)
    token.set_defaults(func=cmd_token)

    prompts = sub.add_parser("prompts", parents=[common], help="IVR voice prompts")
    prompts_sub = prompts.add_subparsers(dest="prompts_command", required=True)
    build = prompts_sub.add_parser("build", help="render the Mandarin prompt texts to 8 kHz WAV")
    build.add_argument("--force", action="store_true",
                       help="rebuild every prompt, not only changed ones")
    build.add_argument("--output", help="output directory (overrides prompts.output)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    prompts.set_defaults(func=cmd_prompts)

    staff = sub.add_parser("staff", parents=[common], help="staff console accounts")
    staff_sub = staff.add_subparsers(dest="staff_command", required=True)
    staff_create = staff_sub.add_parser(
        "create", help="create a console account; the password is read from stdin or prompted")
    staff_create.add_argument("--username", required=True, help="sign-in name (letters, digits, . _ -)")
    staff_create.add_argument("--name", required=True, help="the staff member's name, written to case logs")
    staff_create.add_argument("--role", required=True, choices=["staff", "shift_leader"])
    staff_phone = staff_sub.add_parser(
        "phone", help="the phone (queue member interface) whose answered calls pop on this account")
    staff_phone.add_argument("--username", required=True)
    phone_target = staff_phone.add_mutually_exclusive_group(required=True)
    phone_target.add_argument("--interface", help="as queues.conf names the member, e.g. PJSIP/1001")
    phone_target.add_argument("--clear", action="store_true", help="no phone: no screen-pops")
    staff.set_defaults(func=cmd_staff)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
