"""The people and prompts of the prompt library tests.

Departments `sales` and `hr`. `sam` edits sales prompts (a PromptEditor of sales), `sue` is a plain
member of sales, `hal` is in hr, `cora` curates the company-wide library (prompts.curate_prompt),
`olga` is in no department, `root` is a superuser. One prompt per scope, each published.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User

from prompts import services
from prompts.models import Prompt, PromptEditor


@dataclass
class Library:
    sales: Group
    hr: Group
    users: dict[str, User]
    prompts: dict[str, Prompt]


def make_user(name: str, *groups: Group) -> User:
    user = User.objects.create_user(name, f"{name}@example.com", None)  # no hashing: tests sign in by session
    user.groups.add(*groups)
    return user


def make_library() -> Library:
    sales, hr = Group.objects.create(name="sales"), Group.objects.create(name="hr")
    users = {
        "sam": make_user("sam", sales),
        "sue": make_user("sue", sales),
        "hal": make_user("hal", hr),
        "cora": make_user("cora"),
        "olga": make_user("olga"),
        "root": User.objects.create_superuser("root", "root@example.com", None),
    }
    users["cora"].user_permissions.add(Permission.objects.get(codename="curate_prompt"))
    users["cora"] = User.objects.get(pk=users["cora"].pk)  # a fresh object: no stale permission cache
    PromptEditor.objects.create(group=sales, user=users["sam"])
    company = services.prompt_create(actor=users["cora"], title="Summarise", user_template="Summarise: {{text}}",
                                     scope=Prompt.Scope.COMPANY, tags="writing, summary")  # fmt: skip
    services.prompt_publish(prompt=company, actor=users["cora"])
    dept = services.prompt_create(
        actor=users["sam"], title="Sales pitch", system="You write {{tone | choices:formal,casual | default:formal}} pitches.",
        user_template="Pitch {{product}} to {{customer | optional}}.", scope=Prompt.Scope.GROUPS, groups=[sales],
        tags="sales", model="gpt-4o-mini", params={"temperature": 0.3},
    )  # fmt: skip
    services.prompt_publish(prompt=dept, actor=users["sam"])
    personal = services.prompt_create(
        actor=users["sue"], title="My notes", user_template="Tidy up: {{notes}}"
    )
    services.prompt_publish(prompt=personal, actor=users["sue"])
    return Library(sales, hr, users, {"company": company, "groups": dept, "personal": personal})


@pytest.fixture
def library(db: None) -> Library:
    return make_library()


@pytest.fixture
def live_library(transactional_db: None) -> Library:
    return make_library()


def fresh(user: User) -> Any:
    """The user as a new request sees it (no cached groups, editor roles or permissions)."""
    return User.objects.get(pk=user.pk)
