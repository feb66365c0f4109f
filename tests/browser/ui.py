"""How a person uses the dashboard, as the browser tests say it: sign in, find a region, answer
a confirmation dialog, and post a form the way the page's own forms post (same origin, its
cookie, and the page's CSRF token unless told otherwise).

Every wait here is Playwright's: `expect(...)` retries until the page shows what it should.
"""
from __future__ import annotations

import re
from urllib.parse import quote

from playwright.sync_api import Locator, Page, expect

from shared.devhost.process import REPO_ROOT

SIGNIN = "/dashboard/signin"
OVERVIEW = "/dashboard/fleet"
JOBS = "/dashboard/fleet/jobs"
NEW_JOB = "/dashboard/fleet/jobs/new"
BUDGETS = "/dashboard/fleet/budget"

#: axe-core, installed by `npm install` (a devDependency in package.json).
AXE = REPO_ROOT / "node_modules" / "axe-core" / "axe.min.js"


def job_page(job_id: str) -> str:
    return f"{JOBS}/{quote(job_id, safe='')}"


def to_job(job_id: str) -> re.Pattern[str]:
    """An href to the job's page, its id's `:` escaped or not (both name the same page)."""
    return re.compile(f"{re.escape(JOBS)}/(?:{re.escape(job_id)}|{re.escape(quote(job_id, safe=''))})$")


#: Every page, by name -> its path, given the ids of a job and a composite to show.
PAGES = {
    "signin": lambda ids: SIGNIN,
    "overview": lambda ids: OVERVIEW,
    "jobs": lambda ids: JOBS,
    "new-job": lambda ids: NEW_JOB,
    "job": lambda ids: job_page(ids["job"]),
    "composite": lambda ids: job_page(ids["composite"]),
    "budget": lambda ids: BUDGETS,
}


def signed_in(page: Page, token: str, landing: str = OVERVIEW) -> Page:
    """Sign in with `token` on the sign-in page and wait for the page it lands on."""
    page.goto(SIGNIN)
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(re.escape(landing) + r"(\?.*)?$"))
    return page


def region(page: Page, name: str) -> Locator:
    """The page section headed `name` (its h2)."""
    return page.get_by_role("region", name=name, exact=True)


def confirm(page: Page, question: str) -> None:
    """The confirmation dialog asks `question`; answer `Confirm`."""
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(question)
    dialog.get_by_role("button", name="Confirm", exact=True).click()


def status(page: Page, text: str | re.Pattern[str]) -> Locator:
    """The status line saying `text` (what an action did)."""
    return page.get_by_role("status").filter(has_text=text)


def facts(page: Page) -> Locator:
    """A job page's `<dl>` of facts: the one with a `Stage` term."""
    return page.locator("dl").filter(has=page.locator("dt", has_text=re.compile(r"^\s*Stage\s*$"))).first


def fill(page: Page | Locator, label: str, value: str) -> None:
    """Set the field labelled `label`: pick the option of a select, type into anything else.
    (Not an exact match: a label wrapping a select names it with the selected option too.)"""
    field = page.get_by_label(label)
    if field.evaluate("element => element.tagName") == "SELECT":
        field.select_option(value)
    else:
        field.fill(value)


def csrf(page: Page) -> str:
    """The CSRF token the page carries in `<meta name="csrf-token">`."""
    return page.locator('meta[name="csrf-token"]').get_attribute("content")


def post_form(page: Page, path: str, fields: dict[str, str | list[str]], with_csrf: bool = True) -> dict:
    """POST `fields` (form-encoded) to `path` from inside the page, with its session cookie,
    as its own forms would; `{"status", "text"}` of the answer, redirects not followed."""
    pairs = [(name, item) for name, value in fields.items() for item in ([value] if isinstance(value, str) else value)]
    if with_csrf:
        pairs.append(("csrf", csrf(page)))
    return page.evaluate(
        """async ([path, pairs]) => {
            const answer = await fetch(path, {method: "POST", body: new URLSearchParams(pairs),
                                              redirect: "manual", credentials: "same-origin"});
            return {status: answer.status, text: await answer.text()};
        }""",
        [path, pairs],
    )


def axe_violations(page: Page, impacts: frozenset[str] = frozenset({"serious", "critical"})) -> list[dict]:
    """Run axe-core in the page; its violations of the given impacts."""
    page.add_script_tag(path=str(AXE))
    results = page.evaluate("axe.run()")
    return [violation for violation in results["violations"] if violation["impact"] in impacts]


def describe(violations: list[dict]) -> str:
    """One paragraph per violation: rule, impact, help, and the elements it found."""
    lines = []
    for violation in violations:
        lines.append(f"{violation['id']} ({violation['impact']}): {violation['help']} — {violation['helpUrl']}")
        lines.extend(f"    {node['target']}: {node.get('failureSummary', '').strip()}" for node in violation["nodes"])
    return "\n".join(lines)


def axe_available() -> bool:
    return AXE.is_file()
