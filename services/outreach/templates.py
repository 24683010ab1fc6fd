"""SMS templates per kind and language, checked at start and rendered for a task.

A template is a ``str.format`` text whose variables come from the task's
``params`` (alerting fills them; tasks created through the API bring their
own). ``check_templates`` refuses, at start, a template that uses a variable
outreach does not know, or whose language variants use different variables:
a typo is then an error when the service starts, not a failed SMS at night.
"""

# Chinese text uses full-width punctuation (commas, full stops, colons), which is
# correct there; ruff would take it for look-alikes of ASCII punctuation.
# ruff: noqa: RUF001

from __future__ import annotations

import string
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo

KNOWN_VARIABLES: frozenset[str] = frozenset(
    {
        "name",  # the subscriber's name (may be empty)
        "amount",  # an amount of money, already formatted ("50.00")
        "suspension_at",  # ISO 8601 in params; rendered in OUTREACH_TIMEZONE
        "account_manager",  # the account manager's id or name (may be empty)
        "offer",  # the text of an offer, for tasks that carry one
        "days_overdue",
        "usual_amount",  # the subscriber's usual bill (bill shock)
        "score",  # the churn risk that fired the task ("0.82")
    }
)
"""Every variable a template may use: what alerting puts in a task's ``params``."""

UNSUBSCRIBE: dict[str, str] = {
    "en": "Reply T to stop offers.",
    "zh": "回复T退订优惠信息。",
}
"""The opt-out instruction every marketing SMS carries, per language (a T/TD reply opts out)."""

# Keys are (template name, language). A task names its template (alerting's
# rules do) or, without one, uses the template named after its kind; the kind
# templates are the fallbacks. Offers end with the opt-out instruction; for any
# other template sent as marketing, ``render`` appends it.
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
        "Your latest bill of {amount} is higher than your usual {usual_amount}. Reply HELP "
        "and we will go through it with you and check that your plan still suits you."
    ),
    ("bill_shock_care", "zh"): (
        "您最近一期账单为{amount}，高于您通常的{usual_amount}。请回复HELP，我们将与您一起核对账单，并确认您的套餐是否合适。"
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

_MONTHS_EN = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class TemplateError(ValueError):
    """A template is broken (at start), or a task's SMS cannot be rendered (at send time)."""


def template_names() -> set[str]:
    """Every template name outreach knows (alerting's rules may name only these)."""
    return {name for name, _ in TEMPLATES}


def template_fields(template: str) -> set[str]:
    """The variable names a template uses."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def check_templates(templates: Mapping[tuple[str, str], str] | None = None) -> None:
    """Refuse broken templates; call it at start (default: ``TEMPLATES``).

    Raises ``TemplateError`` naming every problem: a template without its
    English variant, a variable outside ``KNOWN_VARIABLES``, language variants
    that use different variables (a Chinese text that forgets the amount), a
    format string that does not render, or a language without an opt-out
    instruction (``UNSUBSCRIBE``) for marketing SMS.
    """
    templates = TEMPLATES if templates is None else templates
    problems: list[str] = []
    for (name, language), text in sorted(templates.items()):
        where = f"{name}/{language}"
        if language not in UNSUBSCRIBE:
            problems.append(f"{where}: no opt-out instruction for language {language!r}")
        try:
            fields = template_fields(text)
        except ValueError as exc:  # an unmatched brace
            problems.append(f"{where}: not a format string: {exc}")
            continue
        unknown = fields - KNOWN_VARIABLES
        if unknown:
            problems.append(f"{where}: unknown variables {sorted(unknown)}")
        base = templates.get((name, FALLBACK_LANGUAGE))
        if base is None:
            problems.append(f"{where}: no {FALLBACK_LANGUAGE!r} variant to fall back to")
        elif language != FALLBACK_LANGUAGE:
            try:
                base_fields = template_fields(base)
            except ValueError:
                base_fields = fields  # reported on the base's own entry
            if fields != base_fields:
                problems.append(
                    f"{where}: uses {sorted(fields)} but {name}/{FALLBACK_LANGUAGE} "
                    f"uses {sorted(base_fields)}"
                )
        if not unknown:
            try:  # positional fields, bad format specs, attribute access
                text.format_map(dict.fromkeys(fields, "x"))
            except (KeyError, IndexError, ValueError, AttributeError) as exc:
                problems.append(f"{where}: does not render: {exc!r}")
    if problems:
        raise TemplateError("bad SMS templates: " + "; ".join(problems))


def format_time(value: str, language: str, zone: tzinfo) -> str:
    """An ISO 8601 time (from params) as the subscriber reads it, in the operator's zone.

    A value that is not an ISO time (a task created by hand with "tomorrow")
    is used as it is; a time without a zone is taken as UTC.
    """
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return value
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    local = at.astimezone(zone)
    if language == "zh":
        return f"{local.year}年{local.month}月{local.day}日 {local:%H:%M}"
    return f"{local.day} {_MONTHS_EN[local.month - 1]} {local.year} {local:%H:%M}"


def render(
    name: str,
    language: str,
    params: Mapping[str, str],
    *,
    zone: tzinfo = UTC,
    marketing: bool = False,
) -> str:
    """The SMS text of template ``name`` in ``language`` (English if it has none).

    ``name`` is the task's template, or its kind when it names none. Times
    (``suspension_at``) are shown in ``zone`` (``OUTREACH_TIMEZONE``). A
    marketing SMS always ends with the opt-out instruction of its language:
    appended if the template does not already carry it. An unknown template
    or a missing variable raises ``TemplateError``: the dispatcher then fails
    the task with that reason. An unknown template is not replaced by the
    kind's: that could send an offer where a care message was meant.
    """
    used = language if (name, language) in TEMPLATES else FALLBACK_LANGUAGE
    template = TEMPLATES.get((name, used))
    if template is None:
        raise TemplateError(f"unknown SMS template {name!r}")
    missing = template_fields(template) - params.keys()
    if missing:
        raise TemplateError(f"template {name}/{used} needs {sorted(missing)}")
    variables = dict(params)
    if "suspension_at" in variables:
        variables["suspension_at"] = format_time(variables["suspension_at"], used, zone)
    try:
        text = template.format_map(variables)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:  # e.g. a bad format spec
        raise TemplateError(f"template {name}/{used} failed: {exc}") from exc
    if marketing:
        instruction = UNSUBSCRIBE.get(used, UNSUBSCRIBE[FALLBACK_LANGUAGE])
        if instruction not in text:
            # Chinese runs sentences together; the others take a space.
            text += instruction if used == "zh" else f" {instruction}"
    return text
