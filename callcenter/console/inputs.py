"""What the console accepts: input models, and errors worded in Chinese for staff (the
English detail stays in the log)."""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from callcenter.cases.lifecycle import RejectionReason
from callcenter.service.errors import ServiceError
from callcenter.web.http import ApiError, read_json

FIELD_LABELS = {
    "description": "问题描述", "category": "类别", "grid": "网格", "address": "地址", "reporter_phone": "电话号码",
    "version": "版本", "reason": "原因", "note": "备注", "into": "主案件受理编号", "number": "受理编号",
    "anonymous": "匿名", "confidential": "保密", "pop": "来电", "from": "开始日期", "to": "结束日期", "q": "搜索词",
    "state": "状态", "case": "受理编号", "limit": "条数",
}


def fail(status: int, code: str, message: str, field: str | None = None) -> ApiError:
    return ApiError(status, code, message, field)


def zh_service_error(exc: ServiceError) -> str:
    text = exc.message
    if exc.code == "not_found":
        return "未找到该案件"
    if exc.code == "conflict":
        return "该案件已被他人修改"
    if exc.field == "category" and "before submitting" in text:
        return "提交前请先选择类别"  # a refused step (409) since the API's error review
    if exc.code == "illegal_transition":
        return "该案件当前状态不允许此操作"
    if exc.field == "category":
        return "提交前请先选择类别" if "before submitting" in text else "类别代码无效，请从分类中选择"
    if exc.field == "grid":
        return "网格代码无效，请从网格列表中选择"
    if exc.field == "reporter_phone":
        return "电话号码无效"
    if exc.field == "description":
        return "请填写问题描述" if "needs a description" in text else "问题描述过长或含非法字符"
    if exc.field == "address":
        return "地址过长或含非法字符"
    if exc.field == "into":
        return "不能合并到自身" if "itself" in text else "主案件受理编号无效"
    if exc.field == "number":
        return "受理编号无效"
    return "输入有误" + (f"：{FIELD_LABELS.get(exc.field, exc.field)}" if exc.field else "")


async def read_input(request: web.Request, model: type[BaseModel]) -> Any:
    """read_json with the message in Chinese (the English detail stays for the log)."""
    try:
        return await read_json(request, model)
    except ApiError as exc:
        label = FIELD_LABELS.get(exc.field or "", exc.field or "")
        zh = {413: "提交的内容过大", 415: "请求格式错误"}.get(exc.status, f"输入有误：{label}" if label else "请求格式错误")
        raise ApiError(exc.status, exc.code, zh, exc.field) from exc


# ---------------------------------------------------------------------------- writes

Short = Annotated[StrictStr, Field(max_length=256)]
Code = Annotated[StrictStr, Field(max_length=32)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DraftIn(_In):
    description: Annotated[StrictStr, Field(max_length=4000)] = ""
    reporter_phone: Annotated[StrictStr, Field(max_length=32)] | None = None
    pop: Annotated[StrictStr, Field(max_length=64)] | None = None
    category: Code | None = None
    grid: Code | None = None
    address: Short | None = None
    anonymous: StrictBool = False
    confidential: StrictBool = False


class TranscriptionIn(_In):
    version: StrictInt
    seen_log: Annotated[StrictInt, Field(ge=0)] | None = None
    description: Annotated[StrictStr, Field(max_length=4000)] | None = None
    category: Code | None = None
    grid: Code | None = None
    address: Short | None = None


class SubmitIn(_In):
    version: StrictInt
    seen_log: Annotated[StrictInt, Field(ge=0)] | None = None


class RejectIn(_In):
    reason: RejectionReason
    note: Short | None = None


class CallbackIn(_In):
    phone: Short | None = None


class MergeIn(_In):
    into: Code
    note: Short | None = None

