"""PR mode (`AQ_FLEET_PR=1`): a job with a `repo` runs in an isolated checkout on its own
branch, and what the command leaves there is delivered as a pull request.

    checkout = prepare(job, into=workdir, git_base="https://github.com/")
    ... run the command in checkout.path ...
    pr = deliver(checkout, title="Fix 42", body="...")     # commit, push, `gh pr create`

`repo` is `owner/name` (a GitHub repository, cloned from `git_base` + `owner/name`; tests point
`AQ_FLEET_GIT_BASE` at a local directory of bare repositories) or a clone URL used as is. The
branch is `aq/job/<job id>` (`:` replaced by `-`, since git refs cannot hold it), started from
`baseBranch` (default: the repository's default branch) and force-pushed: it belongs to the job,
and a retried attempt replaces the last one's.
"""
from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: `owner/name`, the GitHub shorthand.
_SHORTHAND = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_PR_URL = re.compile(r"https?://\S+")
GIT_TIMEOUT = 600.0
GH_TIMEOUT = 120.0


class DeliveryFailed(RuntimeError):
    """A git or gh step of PR mode failed; the message says which and what it printed."""


class Withdrawn(RuntimeError):
    """PR mode stopped delivering: the job's lease was taken while it did (the message says when).
    `pushed`: the branch it had pushed by then, if it had."""

    def __init__(self, message: str, pushed: str | None = None) -> None:
        super().__init__(message)
        self.pushed = pushed


@dataclass(frozen=True)
class Checkout:
    path: Path
    #: The job's branch, `aq/job/<id>`.
    branch: str
    #: The branch it starts from and the pull request targets.
    base: str


@dataclass(frozen=True)
class PullRequest:
    url: str | None  # None: the command changed nothing, so there is nothing to propose
    branch: str


def clone_url(repo: str, git_base: str = "https://github.com/") -> str:
    """Where to clone `repo` from: `owner/name` under `git_base`, a URL as it is."""
    if _SHORTHAND.match(repo):
        return git_base + repo if git_base.endswith("/") else f"{git_base}/{repo}"
    return repo


def branch_name(job_id: str) -> str:
    """`aq/job/<job id>` as a valid git branch name."""
    name = re.sub(r"\.{2,}", ".", job_id.replace(":", "-")).strip(".")
    return f"aq/job/{name.removesuffix('.lock')}"


def prepare(repo: str, base_branch: str | None, job_id: str, into: Path, git_base: str) -> Checkout:
    """Clone `repo` into `into` (which must not exist) and check out the job's branch."""
    source = clone_url(repo, git_base)
    args = ["clone", "--quiet", "--no-tags"]
    if base_branch:
        args += ["--branch", base_branch]
    _git(*args, "--", source, str(into), cwd=into.parent)
    base = base_branch or _git("rev-parse", "--abbrev-ref", "HEAD", cwd=into).strip()
    branch = branch_name(job_id)
    _git("checkout", "--quiet", "-B", branch, cwd=into)
    return Checkout(into, branch, base)


def deliver(checkout: Checkout, title: str, body: str, author: str, gh: str = "gh",
            wanted: Callable[[], bool] = lambda: True) -> PullRequest:
    """Commit whatever the command left uncommitted, push the branch, and open a pull request
    with `gh pr create` (or find the one already open for the branch). A branch with no commits
    beyond its base is not pushed: `url` is None. `wanted()` is asked before the push and
    before the pull request (a job taken away meanwhile wants neither): `Withdrawn` if not."""
    path = checkout.path
    _git("add", "--all", cwd=path)
    if _git("status", "--porcelain", cwd=path).strip():
        _git(*_identity(path, author), "commit", "--quiet", "--no-verify", "-m", title, cwd=path)
    ahead = int(_git("rev-list", "--count", f"origin/{checkout.base}..HEAD", cwd=path).strip() or 0)
    if ahead == 0:
        return PullRequest(None, checkout.branch)
    if not wanted():
        raise Withdrawn("the job was taken away before its branch was pushed")
    _git("push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{checkout.branch}", cwd=path)
    if not wanted():
        raise Withdrawn(f"the job was taken away after its branch {checkout.branch} was pushed; no pull request",
                        pushed=checkout.branch)
    done = _run(
        [gh, "pr", "create", "--base", checkout.base, "--head", checkout.branch, "--title", title, "--body", body],
        cwd=path, timeout=GH_TIMEOUT,
    )
    urls = _PR_URL.findall(done.stdout)
    if done.returncode != 0:
        # `gh` names the pull request already open for this branch (a retried job) in its error.
        urls = _PR_URL.findall(done.stderr + "\n" + done.stdout)
        if not urls or "already exists" not in done.stderr + done.stdout:
            raise DeliveryFailed(f"gh pr create exited with {done.returncode}: {_tail(done)}")
    if not urls:
        raise DeliveryFailed(f"gh pr create printed no pull request URL: {_tail(done)}")
    return PullRequest(urls[-1], checkout.branch)


def _identity(path: Path, author: str) -> list[str]:
    """`-c user.name/user.email` for a commit, unless git already has an identity configured."""
    configured = _run(["git", "config", "--get", "user.email"], cwd=path, timeout=GIT_TIMEOUT)
    if configured.returncode == 0 and configured.stdout.strip():
        return []
    return ["-c", f"user.name={author}", "-c", "user.email=fleet-factory@localhost"]


def _git(*args: str, cwd: Path) -> str:
    done = _run(["git", *args], cwd=cwd, timeout=GIT_TIMEOUT)
    if done.returncode != 0:
        raise DeliveryFailed(f"git {args[0]} exited with {done.returncode}: {_tail(done)}")
    return done.stdout


def _run(command: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # never wait for a password on a terminal
    try:
        return subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        raise DeliveryFailed(f"{command[0]} is not installed (or not on PATH)") from exc
    except subprocess.TimeoutExpired as exc:
        raise DeliveryFailed(f"{command[0]} {command[1]} did not finish in {timeout:g}s") from exc


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    return (done.stderr.strip() or done.stdout.strip())[-500:]
