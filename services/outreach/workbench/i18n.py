"""Every string of the workbench in English and Chinese, and how a page picks its language.

The language is the ``cw_lang`` cookie (set by the toggle link), else the best
of ``en``/``zh`` in the browser's Accept-Language, else English. Reasons are
shown in the page's language through the call scripts' titles of their codes.
"""

# Chinese text uses full-width punctuation, which is correct there.
# ruff: noqa: RUF001

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.outreach.scripts import script, topic_of

LANGUAGES = ("en", "zh")
"""The languages of the pages."""

LANG_COOKIE = "cw_lang"
"""The cookie the language toggle sets."""

# Keys whose missing value falls back to the part after the prefix (a new status
# or outcome from another service shows as itself rather than breaking a page).
_OPEN_PREFIXES = ("status_", "outcome_", "kind_", "tier_", "channel_", "band_", "offer_")

STRINGS: Mapping[str, tuple[str, str]] = {
    # the frame
    "app_name": ("churnwatch workbench", "churnwatch 客户经理工作台"),
    "skip_to_content": ("Skip to content", "跳到正文"),
    "nav_label": ("Pages", "页面"),
    "my_day": ("My day", "我的一天"),
    "team_page": ("Team", "团队"),
    "switch_language": ("中文", "English"),
    "sign_in": ("Sign in", "登录"),
    "sign_out": ("Sign out", "退出"),
    "sign_in_name": ("Sign-in name", "登录名"),
    "password": ("Password", "密码"),
    "sign_in_failed": (
        "Sign-in failed: the name or the password is wrong.",
        "登录失败：登录名或密码错误。",
    ),
    "sign_in_locked": (
        "This account is locked after too many failed sign-ins. Try again later, "
        "or ask an administrator to unlock it.",
        "登录失败次数过多，账户已锁定。请稍后再试，或请管理员解锁。",
    ),
    "role_manager": ("account manager", "客户经理"),
    "role_team_lead": ("team lead", "团队主管"),
    "role_admin": ("administrator", "管理员"),
    # confirmations after an action
    "done_claimed": ("The call is yours now.", "已认领此呼叫。"),
    "done_started": ("Call started.", "呼叫已开始。"),
    "done_recorded": ("Outcome recorded.", "结果已记录。"),
    # My day
    "calls_in_hand": ("Calls in hand", "进行中的呼叫"),
    "vip_reminders_due": ("VIP reminders before suspension", "VIP停机前提醒"),
    "vip_reminders_hint": (
        "Every VIP must be reminded before the service is suspended. Soonest suspension first.",
        "每位VIP客户在停机前都必须先提醒。按停机时间先后排列。",
    ),
    "no_reminders": ("No VIP reminder is due.", "没有待办的VIP停机提醒。"),
    "todays_calls": ("Today's retention calls", "今日挽留呼叫"),
    "todays_calls_hint": (
        "The most urgent first (risk × value), up to the daily norm.",
        "按紧急程度（风险 × 价值）排列，以每日定额为限。",
    ),
    "done_of_norm": ("{done} of {norm} done", "已完成 {done} / {norm}"),
    "norm_reached": ("The day's norm is reached.", "今日定额已完成。"),
    "no_calls": ("No retention call is due.", "没有待办的挽留呼叫。"),
    "todays_warnings": ("Today's warnings by type", "今日预警（按类型）"),
    "no_warnings": ("No warning today.", "今日没有预警。"),
    "subscriber": ("Subscriber", "客户"),
    "tier": ("Tier", "等级"),
    "suspension": ("Suspension", "停机"),
    "countdown": ("Time left", "剩余时间"),
    "status": ("Status", "状态"),
    "action": ("Action", "操作"),
    "risk": ("Risk", "风险"),
    "value": ("Monthly value", "月价值"),
    "top_reasons": ("Top reasons", "主要原因"),
    "claim": ("Claim", "认领"),
    "start_call": ("Start call", "开始呼叫"),
    "claimed_by": ("claimed by {who}", "已由 {who} 认领"),
    "in_your_hands": ("in your hands", "由您处理"),
    "not_due_yet": ("not due yet", "尚未到期"),
    "escalated": ("escalated", "已升级"),
    "escalated_column": ("Escalated", "已升级"),
    "due": ("due", "截止"),
    "n_days": ("{n} d", "{n}天"),
    "n_hours": ("{n} h", "{n}小时"),
    "n_minutes": ("{n} min", "{n}分钟"),
    "in_span": ("in {span}", "还有{span}"),
    "overdue_by": ("overdue by {span}", "已逾期{span}"),
    # the outcome form
    "record_outcome": ("Record the outcome", "记录结果"),
    "offer_which": ("Offer accepted (which)", "接受的优惠（哪一项）"),
    "callback_at": ("Call back at", "回电时间"),
    "note": ("Note", "备注"),
    "save_outcome": ("Save outcome", "保存结果"),
    "outcome_reached": ("Reached", "已联系上"),
    "outcome_unreachable": ("Not reached", "未联系上"),
    "outcome_callback": ("Call back at…", "约定回电…"),
    "outcome_retained": ("Retained", "已挽留"),
    "outcome_offer_accepted": ("Offer accepted", "接受优惠"),
    "outcome_not_interested": ("Not interested", "不感兴趣"),
    "outcome_complaint_raised": ("Complaint raised", "提出投诉"),
    "outcome_do_not_contact": ("Do not contact", "勿再联系"),
    "outcome_won_back": ("Won back", "已赢回"),
    "offer_discount": ("Discount", "资费折扣"),
    "offer_data_bundle": ("Data bundle", "流量包"),
    "offer_device_upgrade": ("Device upgrade", "换机优惠"),
    "offer_plan_change": ("Better-fitting plan", "更合适的套餐"),
    "offer_loyalty_points": ("Loyalty points", "积分奖励"),
    "offer_gift": ("Gift", "礼品"),
    # the subscriber card
    "subscriber_card": ("Subscriber", "客户卡片"),
    "account_manager": ("Account manager", "客户经理"),
    "language": ("Language", "语言"),
    "opt_out": ("Do-not-contact", "免打扰"),
    "opted_out": ("on the do-not-contact list", "已列入免打扰名单"),
    "not_opted_out": ("may be contacted", "可以联系"),
    "phone": ("Phone", "电话"),
    "reveal_to_call": ("Reveal to call", "显示号码以拨打"),
    "reveal_recorded": ("(this reveal is recorded)", "（本次查看已记录）"),
    "risk_now": ("Risk now", "当前风险"),
    "risk_trend": ("Risk trend", "风险趋势"),
    "from_latest_task": ("from the latest task", "来自最近的任务"),
    "reasons": ("Reasons", "原因"),
    "not_available": ("not available", "暂无数据"),
    "retention_script": ("Retention script for the top reason", "针对主要原因的挽留话术"),
    "open_calls": ("Open calls", "待办呼叫"),
    "no_open_calls": ("No open call.", "没有待办呼叫。"),
    "recent_activity": ("Recent activity", "近期动态"),
    "bills": ("Bills", "账单"),
    "payments": ("Payments", "缴费"),
    "stop_notices": ("Stop notices", "停机通知"),
    "complaints": ("Complaints", "投诉"),
    "none": ("none", "无"),
    "amount_due": ("due", "应缴"),
    "amount_paid": ("paid", "已缴"),
    "amount_to_pay": ("to pay", "待缴"),
    "late": ("late", "逾期"),
    "resolved": ("resolved", "已解决"),
    "open": ("open", "未解决"),
    "contact_history": ("Contact history", "联系记录"),
    "phone_reveals": ("Phone number reveals", "号码查看记录"),
    # the team page
    "month": ("Month", "月份"),
    "show": ("Show", "显示"),
    "export_csv": ("Export CSV", "导出CSV"),
    "per_manager_tier": ("Per account manager and tier", "按客户经理和等级"),
    "reminder_rate": ("Reminded before suspension", "停机前提醒率"),
    "reminders_ahead": ("Suspensions ahead, reminded", "待停机已提醒"),
    "calls_today": ("Calls today", "今日呼叫"),
    "calls_per_day": ("Calls per day (month)", "日均呼叫（本月）"),
    "saves": ("Saves", "挽留成功"),
    "win_backs": ("Win-backs", "赢回"),
    "no_manager": ("(no manager)", "（无客户经理）"),
    "no_team_data": ("Nothing for this team this month.", "本团队本月没有数据。"),
    "team_hint": (
        "Calls: outcomes recorded on claimed calls; the norm is {norm} a day. Saves: calls "
        "ending retained or offer accepted. Win-backs: won back / offers that reached the "
        "subscriber.",
        "呼叫：已认领呼叫所记录的结果；定额为每天 {norm} 个。"
        "挽留成功：结果为已挽留或接受优惠的呼叫。"
        "赢回：赢回数 / 已触达客户的赢回优惠数。",
    ),
    "escalated_reminders": ("Escalated reminders", "已升级的提醒"),
    "misses": ("Missed reminders (suspended without a reminder)", "漏提醒（停机前未提醒）"),
    "misses_hint": (
        "VIPs suspended this month who were not reminded before the suspension.",
        "本月已停机但停机前未获提醒的VIP客户。",
    ),
    "no_misses": ("No miss this month.", "本月没有漏提醒。"),
    "suspended_at": ("suspended", "停机于"),
    # error pages
    "error_nothing_changed": ("Nothing was changed.", "未做任何更改。"),
    "back_to_my_day": ("Back to my day", "返回我的一天"),
    "error_400": ("Bad request", "请求无效"),
    "error_403": ("Not allowed", "无权访问"),
    "error_404": ("Not found", "未找到"),
    "error_409": ("Conflict", "冲突"),
    "error_413": ("The form is too large", "表单过大"),
    "error_422": ("The form is not valid", "表单无效"),
    "error_other": ("Something went wrong", "出现错误"),
    "error_csrf": (
        "The form had no valid security token (it may be old). Reload the page and try again.",
        "表单缺少有效的安全令牌（可能已过期）。请刷新页面后重试。",
    ),
    "error_signed_out": (
        "You are not signed in (or your session ended). Sign in and try again.",
        "您尚未登录（或会话已结束）。请登录后重试。",
    ),
    "error_form_type": ("The form was not sent as a web form.", "表单提交格式不正确。"),
    "error_no_task": ("There is no such task.", "没有这个任务。"),
    "error_no_subscriber": ("There is no such subscriber here.", "这里没有这个客户。"),
    "error_no_phone": ("No phone number is known.", "没有已知的电话号码。"),
    "error_not_yours": (
        "This subscriber or task belongs to another account manager.",
        "该客户或任务属于其他客户经理。",
    ),
    "error_team_only": ("This page is for team leads.", "此页面仅供团队主管使用。"),
    "error_period": ("The month must be YYYY-MM.", "月份格式必须为 YYYY-MM。"),
    "error_outcome": ("Choose an outcome.", "请选择结果。"),
    "error_offer": ("Choose which offer was accepted.", "请选择接受的优惠。"),
    "error_callback_at": ("Give the date and time to call back.", "请填写回电的日期和时间。"),
    "error_note": ("The note is too long (500 characters at most).", "备注过长（最多500字）。"),
    # values
    "kind_pre_suspension_reminder": ("Pre-suspension reminder", "停机前提醒"),
    "kind_retention": ("Retention", "挽留"),
    "kind_win_back": ("Win-back", "赢回"),
    "kind_care": ("Care", "关怀"),
    "channel_sms": ("SMS", "短信"),
    "channel_call": ("Call", "电话"),
    "tier_diamond": ("Diamond", "钻石卡"),
    "tier_gold": ("Gold", "金卡"),
    "tier_silver": ("Silver", "银卡"),
    "tier_vip_guest": ("VIP guest", "贵宾"),
    "tier_standard": ("Standard", "普通"),
    "band_high": ("high", "高"),
    "band_medium": ("medium", "中"),
    "band_low": ("low", "低"),
    "status_queued": ("queued", "排队中"),
    "status_assigned": ("claimed", "已认领"),
    "status_in_progress": ("in progress", "进行中"),
    "status_completed": ("completed", "已完成"),
    "status_expired": ("expired", "已过期"),
    "status_cancelled": ("cancelled", "已取消"),
    "status_pending": ("pending", "待发送"),
    "status_scheduled": ("scheduled", "已排期"),
    "status_sending": ("sending", "发送中"),
    "status_sent": ("sent", "已发送"),
    "status_delivered": ("delivered", "已送达"),
    "status_failed": ("failed", "失败"),
    "status_unknown": ("unknown", "未知"),
}


class Translator:
    """``t(key, **values)``: the string of ``key`` in one language, formatted."""

    def __init__(self, lang: str) -> None:
        self.index = LANGUAGES.index(lang) if lang in LANGUAGES else 0

    def __call__(self, key: str, **values: Any) -> str:
        """The string, with ``{name}`` placeholders filled from ``values``."""
        pair = STRINGS.get(key)
        if pair is None:
            if key.startswith(_OPEN_PREFIXES):
                return key.split("_", 1)[1]
            raise KeyError(f"no workbench string {key!r}")
        text = pair[self.index]
        return text.format(**values) if values else text

    def has(self, key: str) -> bool:
        """Whether ``key`` has a string."""
        return key in STRINGS


def translator(lang: str) -> Translator:
    """The translator of ``lang`` (English for anything else)."""
    return Translator(lang)


def has(key: str) -> bool:
    """Whether ``key`` has a string."""
    return key in STRINGS


def other(lang: str) -> str:
    """The language the toggle switches to."""
    return "en" if lang == "zh" else "zh"


def from_accept_language(header: str) -> str:
    """The best of our languages in an Accept-Language header; English by default."""
    best, best_q = "en", -1.0
    for position, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                continue
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and q > 0 and q - position * 1e-6 > best_q:
            best, best_q = primary, q - position * 1e-6
    return best


def reason_titles(task: Mapping[str, Any], lang: str) -> list[str]:
    """The task's reasons in ``lang``: its codes' script titles, else its reason texts."""
    codes = task.get("reason_codes") or []
    titles: list[str] = []
    for code in codes:
        title = script(topic_of(code), lang).title
        if title not in titles:
            titles.append(title)
    if titles:
        return titles
    return [str(reason) for reason in task.get("reasons") or []]
