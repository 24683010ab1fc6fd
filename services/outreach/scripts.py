"""Call scripts: what an account manager can say about each reason a call was made.

A claimed call comes with a suggested script per reason code on the task
(scoring's feature codes, ``services/scoring/features.py``, and alerting's
event codes). Codes that call for the same conversation share a script; a
code this module does not know gets the generic script, so a new code in
scoring never breaks a claim. Scripts exist in English and simplified
Chinese (the task's ``language``; other languages get English).
"""

# Chinese text uses full-width punctuation, which is correct there; ruff would
# take it for look-alikes of ASCII punctuation.
# ruff: noqa: RUF001

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Script:
    """One suggested conversation: a short title and what to say, in one language."""

    topic: str
    title: str
    text: str


# topic -> language -> (title, text)
_TEXTS: dict[str, dict[str, tuple[str, str]]] = {
    "competitor": {
        "en": (
            "Calls to another network",
            "They call people on another network more than before; friends or family may "
            "have moved. Ask whether they have been offered something elsewhere, and "
            "present our on-net and all-network minute options that match how they call.",
        ),
        "zh": (
            "与其他网络通话增多",
            "客户与其他网络的通话比以前多，可能亲友已转网。询问是否收到其他运营商的优惠，"
            "并介绍符合其通话习惯的网内及全网通话套餐。",
        ),
    },
    "usage_down": {
        "en": (
            "Using the line less",
            "Their use of the line has dropped. Ask whether the service still fits their "
            "needs or whether something (coverage, a second SIM, a new phone) changed, and "
            "suggest a plan that matches how they use it now.",
        ),
        "zh": (
            "使用量下降",
            "客户的使用量明显下降。询问服务是否仍满足需要，或是否有变化（信号、第二张卡、换机），"
            "并推荐与当前用量相符的套餐。",
        ),
    },
    "usage_up": {
        "en": (
            "Using the line more",
            "Their use has grown. Check that their plan still covers it without extra "
            "charges, and offer a bundle that gives them more for the same or less.",
        ),
        "zh": (
            "使用量上升",
            "客户用量增加。确认当前套餐是否已足够、是否产生额外费用，并推荐更划算的组合套餐。",
        ),
    },
    "bill_high": {
        "en": (
            "A higher bill than usual",
            "Their latest bill is well above their usual. Go through it with them, explain "
            "what caused it, correct anything wrong, and offer a plan or cap that prevents "
            "surprises.",
        ),
        "zh": (
            "账单高于平常",
            "客户最近的账单明显高于平常。与客户一起核对账单，说明原因，纠正错误，"
            "并推荐能避免意外费用的套餐或封顶服务。",
        ),
    },
    "spend_down": {
        "en": (
            "Spending less",
            "They spend less than they used to. Ask whether the plan is right for them and "
            "whether they use another provider for part of their needs.",
        ),
        "zh": (
            "消费下降",
            "客户消费比以前少。询问当前套餐是否合适，以及是否有部分需求在使用其他运营商。",
        ),
    },
    "downgrade": {
        "en": (
            "Plan downgraded",
            "They moved to a cheaper plan recently. Ask what made them change, and whether "
            "price or a missing feature is the reason; a targeted offer may keep them.",
        ),
        "zh": (
            "套餐降级",
            "客户最近换成了更便宜的套餐。询问原因，是价格还是缺少某项功能；有针对性的优惠可能留住客户。",
        ),
    },
    "payment": {
        "en": (
            "Money overdue",
            "They have money overdue or have paid late. Be helpful, not pushy: check the "
            "amount with them, and offer a payment date or an instalment plan that works.",
        ),
        "zh": (
            "存在欠费",
            "客户有欠费或缴费逾期。态度友善，不要催逼：与客户核对金额，并提供可行的缴费日期或分期方案。",
        ),
    },
    "suspension": {
        "en": (
            "Suspension coming",
            "Their line is due to be suspended for an unpaid balance. Tell them the amount "
            "and the date, help them pay now or agree a plan, and confirm how to pay.",
        ),
        "zh": (
            "即将停机",
            "客户的号码将因欠费停机。告知欠费金额和停机时间，协助立即缴费或商定还款计划，并确认缴费方式。",
        ),
    },
    "complaints": {
        "en": (
            "Recent complaints",
            "They complained recently. Apologise, ask whether the problem is solved, and "
            "if not, own it and agree a date by which it will be.",
        ),
        "zh": (
            "近期有投诉",
            "客户近期有投诉。先致歉，询问问题是否已解决；如未解决，主动负责并约定解决日期。",
        ),
    },
    "inactive": {
        "en": (
            "Not active lately",
            "They have not used the line for a while. Check that the line and the phone "
            "work, and ask whether they still need it or have a new number.",
        ),
        "zh": (
            "近期不活跃",
            "客户一段时间没有使用号码。确认号码和手机是否正常，询问是否仍需要此号码或已换新号。",
        ),
    },
    "new_customer": {
        "en": (
            "New customer",
            "They joined recently. Welcome them, check that everything works as promised "
            "at sign-up, and make sure they know how to reach us.",
        ),
        "zh": (
            "新客户",
            "客户入网不久。表示欢迎，确认各项服务与开户时的承诺一致，并告知联系我们的方式。",
        ),
    },
    "loyal_customer": {
        "en": (
            "Long-standing customer",
            "They have been with us for a long time. Thank them for it, and offer the "
            "loyalty benefits they are entitled to.",
        ),
        "zh": (
            "老客户",
            "客户在网时间长。感谢客户的长期支持，并介绍其可享受的忠诚客户权益。",
        ),
    },
    "valued_customer": {
        "en": (
            "Valued customer",
            "A high-value customer. Introduce yourself as their contact, ask how the "
            "service is for them, and offer priority help whenever they need it.",
        ),
        "zh": (
            "高价值客户",
            "高价值客户。介绍自己是其专属联系人，询问对服务的感受，并承诺随时提供优先服务。",
        ),
    },
    "plan_fit": {
        "en": (
            "Check the plan fits",
            "Ask how they use the line, and check that their plan is the best value for "
            "them; offer a better-suited plan if there is one.",
        ),
        "zh": (
            "确认套餐合适",
            "询问客户的使用习惯，确认当前套餐是否最划算；如有更合适的套餐，主动推荐。",
        ),
    },
    "all_well": {
        "en": (
            "No problem on record",
            "Nothing on record points to a problem here. Ask open questions about the "
            "service to find out what, if anything, is not right.",
        ),
        "zh": (
            "记录中无异常",
            "此项记录未显示问题。用开放式问题了解客户对服务的看法，找出可能的不满。",
        ),
    },
    "win_back": {
        "en": (
            "Left us",
            "They have left. Ask, without pressure, why they left and what would bring "
            "them back, and present the win-back offer.",
        ),
        "zh": (
            "已离网",
            "客户已离网。不施加压力地询问离开的原因以及怎样才愿意回来，并介绍回归优惠。",
        ),
    },
    "generic": {
        "en": (
            "General check-in",
            "Introduce yourself, ask how the service is for them and whether anything "
            "could be better, and note what they say in the outcome.",
        ),
        "zh": (
            "常规回访",
            "自我介绍，询问客户对服务的感受以及是否有可改进之处，并在结果中记录客户的意见。",
        ),
    },
}

GENERIC = "generic"
"""The topic of codes without a script of their own, and of calls without reasons."""

# Every reason code scoring (FEATURES: up and down codes) and alerting emit, with
# its topic. tests/test_call_queue.py checks that none is missing.
CODE_TOPICS: dict[str, str] = {
    # scoring: usage
    "CALLS_UP": "usage_up",
    "CALLS_DOWN": "usage_down",
    "VOICE_UP": "usage_up",
    "VOICE_DOWN": "usage_down",
    "USAGE_UP": "usage_up",
    "USAGE_DOWN": "usage_down",
    "SMS_UP": "usage_up",
    "SMS_DOWN": "usage_down",
    "SMS_RISING": "usage_up",
    "SMS_FALLING": "usage_down",
    "DATA_UP": "usage_up",
    "DATA_DOWN": "usage_down",
    "DATA_RISING": "usage_up",
    "DATA_FALLING": "usage_down",
    "CONTACTS_MANY": "usage_up",
    "CONTACTS_FEW": "usage_down",
    "INACTIVE": "inactive",
    "ACTIVE": "all_well",
    # scoring: competitors
    "COMPETITOR_CALLS_UP": "competitor",
    "COMPETITOR_SHIFT": "competitor",
    "COMPETITOR_CALLS_LOW": "all_well",
    "COMPETITOR_RECEDING": "all_well",
    # scoring: bills and plans
    "BILL_HIGH": "bill_high",
    "BILL_SHOCK": "bill_high",
    "BILL_LOW": "spend_down",
    "BILL_NORMAL": "all_well",
    "SPEND_DROP": "spend_down",
    "SPEND_STEADY": "all_well",
    "PLAN_DOWNGRADE": "downgrade",
    "NO_DOWNGRADE": "all_well",
    # scoring: payments
    "LATE_PAYMENTS": "payment",
    "PAYS_ON_TIME": "all_well",
    "ARREARS": "payment",
    "NO_ARREARS": "all_well",
    "ARREARS_LONG": "payment",
    "ARREARS_SHORT": "payment",
    "STOP_NOTICE": "suspension",
    "NO_STOP_NOTICE": "all_well",
    "SUSPENSION_SOON": "suspension",
    "SUSPENSION_FAR": "all_well",
    # scoring: service and relationship
    "COMPLAINTS_UP": "complaints",
    "NO_COMPLAINTS": "all_well",
    "LONG_TENURE": "loyal_customer",
    "SHORT_TENURE": "new_customer",
    "HIGH_TIER": "valued_customer",
    "LOW_TIER": "plan_fit",
    "HIGH_VALUE": "valued_customer",
    "LOW_VALUE": "plan_fit",
    # scoring: contract version 2 inputs
    "OLD_HANDSET": "plan_fit",
    "NEW_HANDSET": "all_well",
    "MANY_LINES": "valued_customer",
    "SINGLE_LINE": "plan_fit",
    "CONTRACT_ENDING": "plan_fit",
    "CONTRACT_FAR": "all_well",
    "INTL_PLAN": "plan_fit",
    "NO_INTL_PLAN": "all_well",
    "ROAMING_PLAN": "plan_fit",
    "NO_ROAMING_PLAN": "all_well",
    "VOICEMAIL_PLAN": "all_well",
    "NO_VOICEMAIL_PLAN": "plan_fit",
    "UNLIMITED_DATA": "all_well",
    "CAPPED_DATA": "plan_fit",
    "BIG_ALLOWANCE": "all_well",
    "SMALL_ALLOWANCE": "plan_fit",
    "HIGH_PLAN_CHARGE": "bill_high",
    "LOW_PLAN_CHARGE": "plan_fit",
    "OVERAGE": "bill_high",
    "NO_OVERAGE": "all_well",
    "DAY_MINUTES_UP": "usage_up",
    "DAY_MINUTES_DOWN": "usage_down",
    "EVENING_MINUTES_UP": "usage_up",
    "EVENING_MINUTES_DOWN": "usage_down",
    "NIGHT_MINUTES_UP": "usage_up",
    "NIGHT_MINUTES_DOWN": "usage_down",
    "INTL_MINUTES_UP": "bill_high",
    "INTL_MINUTES_DOWN": "usage_down",
    "INTL_CALLS_UP": "bill_high",
    "INTL_CALLS_DOWN": "usage_down",
    "ROAMING_UP": "bill_high",
    "ROAMING_DOWN": "usage_down",
    "COUNTERPARTS_MANY": "usage_up",
    "COUNTERPARTS_FEW": "usage_down",
    "SEVERE_COMPLAINTS": "complaints",
    "NO_SEVERE_COMPLAINTS": "all_well",
    "BILLING_COMPLAINTS": "complaints",
    "NO_BILLING_COMPLAINTS": "all_well",
    "NETWORK_COMPLAINTS": "complaints",
    "NO_NETWORK_COMPLAINTS": "all_well",
    "CARE_CONTACTS": "complaints",
    "FEW_CARE_CONTACTS": "all_well",
    "RETENTION_DESK": "competitor",
    "NO_RETENTION_DESK": "all_well",
    # alerting's event codes (STOP_NOTICE and BILL_SHOCK are above)
    "EARLY_ARREARS": "payment",
    "CHURNED": "win_back",
}

ALERTING_CODES = frozenset({"STOP_NOTICE", "EARLY_ARREARS", "BILL_SHOCK", "CHURNED"})
"""The reason codes alerting puts on tasks it makes from events (not from scores)."""

DEFAULT_LANGUAGE = "en"


def script(topic: str, language: str = DEFAULT_LANGUAGE) -> Script:
    """The script of ``topic`` in ``language`` (English if it has none)."""
    texts = _TEXTS[topic]
    title, text = texts.get(language, texts[DEFAULT_LANGUAGE])
    return Script(topic, title, text)


def topic_of(code: str) -> str:
    """The topic of a reason code; the generic one for a code without a script."""
    return CODE_TOPICS.get(code, GENERIC)


def scripts_for(
    reason_codes: Sequence[str], language: str = DEFAULT_LANGUAGE
) -> list[tuple[list[str], Script]]:
    """The suggested scripts of a call with these reason codes, in the codes' order.

    Each script comes with the codes it answers: codes that share a topic get
    one script, not the same text twice. A call without reason codes gets the
    generic script.
    """
    by_topic: dict[str, list[str]] = {}
    for code in reason_codes:
        by_topic.setdefault(topic_of(code), []).append(code)
    if not by_topic:
        by_topic[GENERIC] = []
    return [(codes, script(topic, language)) for topic, codes in by_topic.items()]
