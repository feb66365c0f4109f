"""PR mode's git side: an isolated checkout on the job's branch, delivered as a pull request."""
from __future__ import annotations

import pytest

from fleetclient import checkout
from tests.factory.conftest import git


@pytest.mark.parametrize("job_id, branch", [
    ("web:abc234", "aq/job/web-abc234"),
    ("my.app:abc234", "aq/job/my.app-abc234"),
    ("a..b:abc234", "aq/job/a.b-abc234"),
])
def test_the_branch_is_named_after_the_job(job_id, branch):
    assert checkout.branch_name(job_id) == branch


@pytest.mark.parametrize("repo, base, url", [
    ("acme/widgets", "https://github.com/", "https://github.com/acme/widgets"),
    ("acme/widgets", "/srv/git", "/srv/git/acme/widgets"),
    ("https://git.example/acme/widgets.git", "https://github.com/", "https://git.example/acme/widgets.git"),
    ("git@github.com:acme/widgets.git", "https://github.com/", "git@github.com:acme/widgets.git"),
])
def test_owner_name_is_cloned_from_the_git_base_and_a_url_as_it_is(repo, base, url):
    assert checkout.clone_url(repo, base) == url


def test_a_checkout_is_on_the_job_branch_from_the_base_branch(git_base, tmp_path):
    work = checkout.prepare("acme/widgets", "develop", "web:abc234", tmp_path / "co", str(git_base))

    assert (work.branch, work.base) == ("aq/job/web-abc234", "develop")
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=work.path).strip() == "aq/job/web-abc234"
    assert (work.path / "README.md").exists()


def test_without_a_base_branch_the_default_branch_is_used(git_base, tmp_path):
    work = checkout.prepare("acme/widgets", None, "web:abc234", tmp_path / "co", str(git_base))
    assert work.base == "main"


def test_delivery_commits_pushes_and_opens_a_pull_request(git_base, tmp_path, gh):
    work = checkout.prepare("acme/widgets", "main", "web:abc234", tmp_path / "co", str(git_base))
    (work.path / "fix.txt").write_text("fixed\n")

    pr = checkout.deliver(work, "Fix the widget", "Fleet job web:abc234", author="fleet factory f1")

    assert pr == checkout.PullRequest("https://github.com/acme/widgets/pull/7", "aq/job/web-abc234")
    bare = git_base / "acme" / "widgets.git"
    assert git("show", "aq/job/web-abc234:fix.txt", cwd=bare) == "fixed\n"
    assert git("log", "-1", "--format=%s", "aq/job/web-abc234", cwd=bare).strip() == "Fix the widget"
    [call] = gh.calls()
    assert call[:2] == ["pr", "create"]
    assert call[call.index("--base") + 1] == "main" and call[call.index("--head") + 1] == "aq/job/web-abc234"


def test_nothing_changed_means_no_push_and_no_pull_request(git_base, tmp_path, gh):
    work = checkout.prepare("acme/widgets", "main", "web:abc234", tmp_path / "co", str(git_base))

    pr = checkout.deliver(work, "Nothing", "", author="f1")

    assert pr.url is None and gh.calls() == []
    assert "aq/job" not in git("branch", "--list", cwd=git_base / "acme" / "widgets.git")


def test_an_already_open_pull_request_is_reused(git_base, tmp_path, gh):
    gh.answer("", stderr='a pull request for branch "aq/job/web-abc234" into branch "main" already exists:\n'
                         "https://github.com/acme/widgets/pull/3\n", code=1)
    work = checkout.prepare("acme/widgets", "main", "web:abc234", tmp_path / "co", str(git_base))
    (work.path / "fix.txt").write_text("again\n")

    assert checkout.deliver(work, "Fix", "", author="f1").url == "https://github.com/acme/widgets/pull/3"


def test_a_failing_gh_is_a_delivery_failure(git_base, tmp_path, gh):
    gh.answer("", stderr="HTTP 401: Bad credentials", code=1)
    work = checkout.prepare("acme/widgets", "main", "web:abc234", tmp_path / "co", str(git_base))
    (work.path / "fix.txt").write_text("x\n")

    with pytest.raises(checkout.DeliveryFailed, match="Bad credentials"):
        checkout.deliver(work, "Fix", "", author="f1")


def test_a_missing_repository_or_branch_is_a_delivery_failure(git_base, tmp_path):
    with pytest.raises(checkout.DeliveryFailed, match="git clone"):
        checkout.prepare("acme/nothing", None, "web:abc234", tmp_path / "a", str(git_base))
    with pytest.raises(checkout.DeliveryFailed, match="git clone"):
        checkout.prepare("acme/widgets", "no-such-branch", "web:abc234", tmp_path / "b", str(git_base))
