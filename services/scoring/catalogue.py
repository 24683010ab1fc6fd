"""The feature catalogue: every model input's unit, meaning, reasons and sources.

``FEATURES`` is what ``services.scoring.features.vector`` returns, in order;
``docs/features.md`` documents each one (tests/test_docs.py checks that it
does), and ``FEATURE_SOURCES`` says which event fields each reads (the import
coverage table of ``churnwatch evaluate-table``).
"""

from __future__ import annotations

from dataclasses import dataclass

FAR_HOURS = 720.0
""""No stop-notice" reads as a suspension this far away, so the feature is monotone."""
UNKNOWN = -1.0
"""A profile number not given (handset age, contract days left, data allowance)."""


@dataclass(frozen=True, slots=True)
class Feature:
    """One model input: unit, meaning, and the reason shown when it drives the risk."""

    unit: str
    meaning: str
    up: tuple[str, str, str]  # (code, English, Chinese) when the value is high
    down: tuple[str, str, str]  # when the value is low


def _f(unit: str, meaning: str, up: tuple[str, str, str], down: tuple[str, str, str]) -> Feature:
    return Feature(unit, meaning, up, down)


FEATURES: dict[str, Feature] = {
    "calls_7d": _f(
        "calls",
        "Voice calls (both directions), 7-day half-life decayed sum",
        ("CALLS_UP", "more calls than usual", "通话次数增加"),
        ("CALLS_DOWN", "fewer calls", "通话次数减少"),
    ),
    "voice_min_7d": _f(
        "minutes",
        "Voice minutes, 7-day half-life decayed sum",
        ("VOICE_UP", "voice usage up", "通话时长增加"),
        ("VOICE_DOWN", "voice usage down", "通话时长减少"),
    ),
    "voice_trend": _f(
        "ratio",
        "Voice minutes per day, 7-day rate vs 30-day rate, minus 1",
        ("USAGE_UP", "usage rising", "使用量上升"),
        ("USAGE_DOWN", "usage falling", "使用量下降"),
    ),
    "sms_7d": _f(
        "messages",
        "SMS sent, 7-day half-life decayed sum",
        ("SMS_UP", "more SMS", "短信增加"),
        ("SMS_DOWN", "fewer SMS", "短信减少"),
    ),
    "sms_trend": _f(
        "ratio",
        "SMS per day, 7-day rate vs 30-day rate, minus 1",
        ("SMS_RISING", "SMS rising", "短信量上升"),
        ("SMS_FALLING", "SMS falling", "短信量下降"),
    ),
    "data_mb_7d": _f(
        "MB",
        "Mobile data, 7-day half-life decayed sum",
        ("DATA_UP", "more data use", "流量使用增加"),
        ("DATA_DOWN", "less data use", "流量使用减少"),
    ),
    "data_trend": _f(
        "ratio",
        "Data per day, 7-day rate vs 30-day rate, minus 1",
        ("DATA_RISING", "data use rising", "流量上升"),
        ("DATA_FALLING", "data use falling", "流量下降"),
    ),
    "competitor_share_7d": _f(
        "share",
        "Share of calls to competitor networks, last ~7 days",
        ("COMPETITOR_CALLS_UP", "calls to competitor networks up", "与竞争对手网络通话占比上升"),
        ("COMPETITOR_CALLS_LOW", "few calls to competitor networks", "与竞争对手网络通话占比低"),
    ),
    "competitor_share_change": _f(
        "share",
        "Competitor share, 7-day minus 30-day",
        ("COMPETITOR_SHIFT", "calls shifting to competitors", "通话正转向竞争对手网络"),
        ("COMPETITOR_RECEDING", "fewer competitor calls than before", "竞争对手网络通话减少"),
    ),
    "distinct_contacts_30d": _f(
        "contacts",
        "Distinct (hashed) contacts seen in 30 days",
        ("CONTACTS_MANY", "many distinct contacts", "联系人较多"),
        ("CONTACTS_FEW", "few distinct contacts", "联系人较少"),
    ),
    "days_since_activity": _f(
        "days",
        "Days since the last usage record",
        ("INACTIVE", "inactive recently", "近期不活跃"),
        ("ACTIVE", "active recently", "近期活跃"),
    ),
    "bill_ratio": _f(
        "ratio",
        "Latest bill / own 90-day average bill (1 when unknown)",
        ("BILL_HIGH", "bill above own average", "账单高于自身平均"),
        ("BILL_LOW", "bill below own average", "账单低于自身平均"),
    ),
    "spend_drop": _f(
        "ratio",
        "max(0, 1 - bill_ratio): how far spend fell",
        ("SPEND_DROP", "spend dropped", "消费下降"),
        ("SPEND_STEADY", "spend steady", "消费稳定"),
    ),
    "bill_shock": _f(
        "ratio",
        "max(0, bill_ratio - 1): an unusually high bill",
        ("BILL_SHOCK", "unusually high bill", "账单异常偏高"),
        ("BILL_NORMAL", "bill as usual", "账单正常"),
    ),
    "downgrades_90d": _f(
        "count",
        "Plan downgrades, 90-day half-life decayed",
        ("PLAN_DOWNGRADE", "plan downgraded", "套餐降级"),
        ("NO_DOWNGRADE", "no recent downgrade", "近期无降档"),
    ),
    "late_payments_90d": _f(
        "count",
        "Late payments, 90-day half-life decayed",
        ("LATE_PAYMENTS", "payments late", "缴费逾期"),
        ("PAYS_ON_TIME", "pays on time", "按时缴费"),
    ),
    "arrears_amount": _f(
        "currency",
        "Overdue amount now (0 once payments cover it)",
        ("ARREARS", "money overdue", "存在欠费"),
        ("NO_ARREARS", "nothing overdue", "无欠费"),
    ),
    "arrears_days": _f(
        "days",
        "Days overdue as last reported (0 once paid)",
        ("ARREARS_LONG", "long overdue", "欠费时间长"),
        ("ARREARS_SHORT", "not overdue long", "欠费时间短"),
    ),
    "stop_notice_pending": _f(
        "0/1",
        "1 while a stop-notice is not paid off",
        ("STOP_NOTICE", "suspension scheduled for unpaid bills", "因欠费即将停机"),
        ("NO_STOP_NOTICE", "no suspension scheduled", "无停机通知"),
    ),
    "hours_to_suspension": _f(
        "hours",
        f"Hours until the pending suspension ({FAR_HOURS:.0f} when none; 0 once past)",
        ("SUSPENSION_FAR", "suspension far off or none", "停机尚远或无"),
        ("SUSPENSION_SOON", "suspension soon", "即将停机"),
    ),
    "complaints_30d": _f(
        "count",
        "Complaints, 30-day half-life decayed",
        ("COMPLAINTS_UP", "recent complaints", "近期有投诉"),
        ("NO_COMPLAINTS", "no recent complaints", "近期无投诉"),
    ),
    "tenure_days": _f(
        "days",
        "Days since activation (or first event)",
        ("LONG_TENURE", "long tenure", "在网时间长"),
        ("SHORT_TENURE", "short tenure", "在网时间短"),
    ),
    "tier_level": _f(
        "level",
        "0 standard, 1 VIP guest, 2 silver, 3 gold, 4 diamond",
        ("HIGH_TIER", "high VIP tier", "高等级VIP"),
        ("LOW_TIER", "standard tier", "普通等级"),
    ),
    "log_monthly_value": _f(
        "log currency",
        "log(1 + monthly value)",
        ("HIGH_VALUE", "high monthly value", "月消费高"),
        ("LOW_VALUE", "low monthly value", "月消费低"),
    ),
    "handset_age_months": _f(
        "months",
        f"Age of the handset in months ({UNKNOWN:.0f} when unknown)",
        ("OLD_HANDSET", "old handset", "手机使用时间长"),
        ("NEW_HANDSET", "new handset", "手机较新"),
    ),
    "lines": _f(
        "lines",
        "Lines or members on the account (1 when unknown)",
        ("MANY_LINES", "many lines on the account", "账户号码多"),
        ("SINGLE_LINE", "single line", "单一号码"),
    ),
    "contract_days_left": _f(
        "days",
        f"Days until the contract's commitment ends ({UNKNOWN:.0f} when unknown; 0 once ended)",
        ("CONTRACT_FAR", "long commitment left", "合约剩余期长"),
        ("CONTRACT_ENDING", "contract ending or out of contract", "合约即将到期或已到期"),
    ),
    "plan_international": _f(
        "0/1",
        "1 with an international calling plan",
        ("INTL_PLAN", "international plan", "开通国际套餐"),
        ("NO_INTL_PLAN", "no international plan", "未开通国际套餐"),
    ),
    "plan_roaming": _f(
        "0/1",
        "1 with roaming in the plan",
        ("ROAMING_PLAN", "roaming plan", "开通漫游"),
        ("NO_ROAMING_PLAN", "no roaming plan", "未开通漫游"),
    ),
    "plan_voicemail": _f(
        "0/1",
        "1 with a voicemail plan",
        ("VOICEMAIL_PLAN", "voicemail plan", "开通语音信箱"),
        ("NO_VOICEMAIL_PLAN", "no voicemail plan", "未开通语音信箱"),
    ),
    "plan_unlimited": _f(
        "0/1",
        "1 with unlimited data",
        ("UNLIMITED_DATA", "unlimited data plan", "无限流量套餐"),
        ("CAPPED_DATA", "capped data plan", "限量流量套餐"),
    ),
    "data_allowance_gb": _f(
        "GB",
        f"Monthly data allowance ({UNKNOWN:.0f} when unknown)",
        ("BIG_ALLOWANCE", "large data allowance", "流量额度大"),
        ("SMALL_ALLOWANCE", "small data allowance", "流量额度小"),
    ),
    "recurring_charge": _f(
        "currency",
        "Monthly recurring (plan) charge, from the profile or the latest bill",
        ("HIGH_PLAN_CHARGE", "expensive plan", "套餐月费高"),
        ("LOW_PLAN_CHARGE", "cheap plan", "套餐月费低"),
    ),
    "overage_share": _f(
        "share",
        "Share of the latest bill beyond the plan (overage / amount due)",
        ("OVERAGE", "paying for usage beyond the plan", "超套餐消费多"),
        ("NO_OVERAGE", "bill within the plan", "账单在套餐内"),
    ),
    "day_min_7d": _f(
        "minutes",
        "Voice minutes in the day band, 7-day half-life decayed",
        ("DAY_MINUTES_UP", "many daytime minutes", "白天通话时长多"),
        ("DAY_MINUTES_DOWN", "few daytime minutes", "白天通话时长少"),
    ),
    "evening_min_7d": _f(
        "minutes",
        "Voice minutes in the evening band, 7-day half-life decayed",
        ("EVENING_MINUTES_UP", "many evening minutes", "晚间通话时长多"),
        ("EVENING_MINUTES_DOWN", "few evening minutes", "晚间通话时长少"),
    ),
    "night_min_7d": _f(
        "minutes",
        "Voice minutes in the night band, 7-day half-life decayed",
        ("NIGHT_MINUTES_UP", "many night minutes", "夜间通话时长多"),
        ("NIGHT_MINUTES_DOWN", "few night minutes", "夜间通话时长少"),
    ),
    "intl_min_7d": _f(
        "minutes",
        "International voice minutes, 7-day half-life decayed",
        ("INTL_MINUTES_UP", "many international minutes", "国际通话时长多"),
        ("INTL_MINUTES_DOWN", "few international minutes", "国际通话时长少"),
    ),
    "intl_calls_7d": _f(
        "calls",
        "International voice calls, 7-day half-life decayed",
        ("INTL_CALLS_UP", "many international calls", "国际通话次数多"),
        ("INTL_CALLS_DOWN", "few international calls", "国际通话次数少"),
    ),
    "roaming_min_7d": _f(
        "minutes",
        "Voice minutes while roaming, 7-day half-life decayed",
        ("ROAMING_UP", "much roaming", "漫游通话多"),
        ("ROAMING_DOWN", "little roaming", "漫游通话少"),
    ),
    "counterparts_30d": _f(
        "contacts",
        "Distinct counterparts reported by usage summaries, 30-day half-life decayed",
        ("COUNTERPARTS_MANY", "calls many different people", "通话对象多"),
        ("COUNTERPARTS_FEW", "calls few different people", "通话对象少"),
    ),
    "severe_complaints_30d": _f(
        "count",
        "High-severity complaints, 30-day half-life decayed",
        ("SEVERE_COMPLAINTS", "serious complaints", "严重投诉"),
        ("NO_SEVERE_COMPLAINTS", "no serious complaints", "无严重投诉"),
    ),
    "billing_complaints_30d": _f(
        "count",
        "Billing complaints, 30-day half-life decayed",
        ("BILLING_COMPLAINTS", "complaints about bills", "账单投诉"),
        ("NO_BILLING_COMPLAINTS", "no billing complaints", "无账单投诉"),
    ),
    "network_complaints_30d": _f(
        "count",
        "Network complaints, 30-day half-life decayed",
        ("NETWORK_COMPLAINTS", "complaints about the network", "网络投诉"),
        ("NO_NETWORK_COMPLAINTS", "no network complaints", "无网络投诉"),
    ),
    "care_contacts_30d": _f(
        "count",
        "Contacts with customer care (contact events, team other than retention), decayed",
        ("CARE_CONTACTS", "frequent calls to customer care", "频繁联系客服"),
        ("FEW_CARE_CONTACTS", "rarely contacts care", "较少联系客服"),
    ),
    "retention_contacts_30d": _f(
        "count",
        "Contacts with the retention (cancellation) desk, 30-day half-life decayed",
        ("RETENTION_DESK", "contacted the retention desk", "联系过挽留/销户部门"),
        ("NO_RETENTION_DESK", "no retention-desk contact", "未联系挽留部门"),
    ),
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)

CATEGORIES: dict[str, tuple[str, str]] = {
    "credit_class": ("credit class", "信用等级"),
    "age_band": ("age band", "年龄段"),
    "region": ("region", "地区"),
    "contract": ("contract", "合约类型"),
    "handset_price_band": ("handset price band", "手机价位"),
}
"""Profile fields read as categories: (English, Chinese) names for reasons; plus ``attributes``."""

FEATURE_SOURCES: dict[str, tuple[str, ...]] = {
    "calls_7d": ("cdr.count", "cdr.service"),
    "voice_min_7d": ("cdr.duration_s", "cdr.service"),
    "voice_trend": ("cdr.duration_s", "cdr.service"),
    "sms_7d": ("cdr.count", "cdr.service"),
    "sms_trend": ("cdr.count", "cdr.service"),
    "data_mb_7d": ("cdr.bytes", "cdr.service"),
    "data_trend": ("cdr.bytes", "cdr.service"),
    "competitor_share_7d": ("cdr.count", "cdr.counterpart_network"),
    "competitor_share_change": ("cdr.count", "cdr.counterpart_network"),
    "distinct_contacts_30d": ("cdr.counterpart_id",),
    "days_since_activity": ("cdr.occurred_at",),
    "bill_ratio": ("billing.amount_due",),
    "spend_drop": ("billing.amount_due",),
    "bill_shock": ("billing.amount_due",),
    "downgrades_90d": ("billing.plan_change",),
    "late_payments_90d": ("payment.late",),
    "arrears_amount": ("arrears.overdue_amount", "payment.amount"),
    "arrears_days": ("arrears.days_overdue", "payment.amount"),
    "stop_notice_pending": ("stop_notice.amount_to_pay", "payment.amount"),
    "hours_to_suspension": ("stop_notice.suspension_at", "payment.amount"),
    "complaints_30d": ("complaint.occurred_at",),
    "tenure_days": ("subscriber.activated_at", "cdr.occurred_at"),
    "tier_level": ("subscriber.tier",),
    "log_monthly_value": ("subscriber.monthly_value",),
    "handset_age_months": ("subscriber.handset.age_months", "subscriber.handset.acquired_at"),
    "lines": ("subscriber.lines",),
    "contract_days_left": ("subscriber.contract_end_at",),
    "plan_international": ("subscriber.plan.international",),
    "plan_roaming": ("subscriber.plan.roaming",),
    "plan_voicemail": ("subscriber.plan.voicemail",),
    "plan_unlimited": ("subscriber.plan.unlimited_data",),
    "data_allowance_gb": ("subscriber.plan.data_allowance_mb",),
    "recurring_charge": ("subscriber.recurring_charge", "billing.recurring_charge"),
    "overage_share": ("billing.overage_charge", "billing.amount_due"),
    "day_min_7d": ("cdr.time_band", "cdr.duration_s"),
    "evening_min_7d": ("cdr.time_band", "cdr.duration_s"),
    "night_min_7d": ("cdr.time_band", "cdr.duration_s"),
    "intl_min_7d": ("cdr.counterpart_network", "cdr.duration_s"),
    "intl_calls_7d": ("cdr.counterpart_network", "cdr.count"),
    "roaming_min_7d": ("cdr.roaming", "cdr.duration_s"),
    "counterparts_30d": ("cdr.distinct_counterparts",),
    "severe_complaints_30d": ("complaint.severity",),
    "billing_complaints_30d": ("complaint.category",),
    "network_complaints_30d": ("complaint.category",),
    "care_contacts_30d": ("contact.team",),
    "retention_contacts_30d": ("contact.team",),
    "cat:credit_class": ("subscriber.credit_class",),
    "cat:age_band": ("subscriber.age_band",),
    "cat:region": ("subscriber.region",),
    "cat:contract": ("subscriber.contract",),
    "cat:handset_price_band": ("subscriber.handset.price_band",),
    "cat:attributes": ("subscriber.attributes",),
}
"""Which event fields (``event_type.field``) each feature reads: the import coverage table."""
