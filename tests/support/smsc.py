"""pytest fixtures for the node-smpp SMSC simulator; the driver itself is `sms.simulator`.

Register with `pytest_plugins = ["tests.support.smsc"]` in the top-level conftest, or
import both fixture names into a conftest.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sms.simulator import (  # noqa: F401 - re-exported for the tests
    ESME_RINVPASWD,
    ESME_RINVSYSID,
    ESME_RMSGQFUL,
    ESME_ROK,
    ESME_RSYSERR,
    ESME_RTHROTTLED,
    ESME_RX_T_APPN,
    SIMULATOR,
    SMSC_DIR,
    SimulatorError,
    SmscSimulator,
    ensure_node_modules,
)


@pytest.fixture(scope="session")
def smsc_simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmscSimulator]:
    """One simulator process for the whole session; its log lands in tmp."""
    simulator = SmscSimulator(log_path=tmp_path_factory.mktemp("smsc") / "simulator.log")
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def smsc(smsc_simulator: SmscSimulator) -> SmscSimulator:
    """The shared simulator, reset: no sessions, default settings, empty log."""
    if not smsc_simulator.running:
        smsc_simulator.start()
    smsc_simulator.reset()
    return smsc_simulator


def busiest_second(times: list[float]) -> int:
    """Most events in any window of one second (times sorted)."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best
