"""SMS templates in English and simplified Chinese, and rendering them for a task."""

# Chinese text uses full-width punctuation (commas, full stops, colons), which is
# correct there; ruff would take it for look-alikes of ASCII punctuation.
# ruff: noqa: RUF001

from __future__ import annotations

import string
from collections.abc import Mapping

# Keys are (template name, language). A task names its template (alerting's
# rules do) or, without one, uses the template named after its kind; the kind
# templates are the fallbacks. Variables come from the task's params, which
# alerting fills: name, account_manager, amount, suspension_at, days_overdue,
# score. A template may use only those, and every language of a template must
# use the same ones (tests/test_outreach.py checks both). Offers (marketing
# templates) end with the opt-out instruction; care and reminders do not need it.
TEMPLATES: dict[tuple[str, str], str] = {
    # --- reminders
    ("pre_suspension_reminder", "en"): (
        "Your line is due to be suspended on {suspension_at} for an unpaid balance of "
        "{amount}. Pay before then to keep your service."
    ),
    ("pre_suspension_reminder", "zh"): (
        "您的号码因欠费{amount}将于{suspension_at}停机。请在此之前缴费，以免影响使用。"
    ),
    # --- offers (marketing)
    ("retention_offer", "en"): (
        "Thank you for staying with us. We have a personal offer on your plan for you: "
        "reply YES to hear it. Reply T to stop offers."
    ),
    ("retention_offer", "zh"): (
        "感谢您一直以来的支持！我们为您的套餐准备了专属优惠，回复YES了解详情。回复T退订优惠信息。"
    ),
    ("win_back_offer", "en"): (
        "We miss you. Come back to us with a special offer: reply YES to hear it. "
        "Reply T to stop offers."
    ),
    ("win_back_offer", "zh"): (
        "我们想念您！现在回来即可享受特别优惠，回复YES了解详情。回复T退订优惠信息。"
    ),
    # --- care (service messages, no offer)
    ("retention_care", "en"): (
        "Thank you for being with us. If anything about your service is not right, "
        "reply HELP and we will call you to sort it out."
    ),
    ("retention_care", "zh"): (
        "感谢您一直以来的支持。如果您对服务有任何不满意，请回复HELP，我们会致电为您解决。"
    ),
    ("arrears_care", "en"): (
        "Your account has {amount} overdue for {days_overdue} days. If you need more time "
        "or a payment plan, reply HELP and we will call you."
    ),
    ("arrears_care", "zh"): (
        "您的账户欠费{amount}，已逾期{days_overdue}天。如需延期或分期缴费，请回复HELP，我们会致电与您联系。"
    ),
    ("bill_shock_care", "en"): (
        "Your latest bill of {amount} is higher than usual. Reply HELP and we will go "
        "through it with you and check that your plan still suits you."
    ),
    ("bill_shock_care", "zh"): (
        "您最近一期账单为{amount}，高于以往。请回复HELP，我们将与您一起核对账单，并确认您的套餐是否合适。"
    ),
    # --- kind fallbacks, for tasks that name no template
    ("retention", "en"): (
        "We value you as our customer. Reply YES for a personal offer on your plan. "
        "Reply T to stop offers."
    ),
    ("retention", "zh"): ("感谢您选择我们。回复YES即可获得您套餐的专属优惠。回复T退订优惠信息。"),
    ("win_back", "en"): (
        "We miss you. Come back with a special offer: reply YES. Reply T to stop offers."
    ),
    ("win_back", "zh"): ("我们想念您。回来即可享受特别优惠：回复YES。回复T退订优惠信息。"),
    ("care", "en"): (
        "We want you to be happy with your service. If there is anything we can do, "
        "reply HELP and we will call you."
    ),
    ("care", "zh"): ("我们希望您对我们的服务满意。如有任何需要，请回复HELP，我们会致电与您联系。"),
}

FALLBACK_LANGUAGE = "en"
"""Every template has this language; a task in a language without one gets it."""


class TemplateError(ValueError):
    """A task's SMS cannot be rendered: unknown template, or a variable is missing."""


def template_names() -> set[str]:
    """Every template name outreach knows (alerting's rules may name only these)."""
    return {name for name, _ in TEMPLATES}


def template_fields(template: str) -> set[str]:
    """The variable names a template uses."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def render(name: str, language: str, params: Mapping[str, str]) -> str:
    """The SMS text of template ``name`` in ``language`` (English if it has none).

    ``name`` is the task's template, or its kind when it names none. An unknown
    template or a missing variable raises ``TemplateError``: the dispatcher
    then fails the task with that reason. An unknown template is not replaced
    by the kind's: that could send an offer where a care message was meant.
    """
    template = TEMPLATES.get((name, language)) or TEMPLATES.get((name, FALLBACK_LANGUAGE))
    if template is None:
        raise TemplateError(f"unknown SMS template {name!r}")
    missing = template_fields(template) - params.keys()
    if missing:
        raise TemplateError(f"template {name}/{language} needs {sorted(missing)}")
    try:
        return template.format_map(params)
    except (KeyError, IndexError, ValueError) as exc:  # e.g. a bad format spec
        raise TemplateError(f"template {name}/{language} failed: {exc}") from exc
