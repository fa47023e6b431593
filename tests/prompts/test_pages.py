"""The library pages and the fragments behind the `/` picker, the playground hooks."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from prompts.models import Prompt, PromptFavorite
from tests.prompts.conftest import Library

pytestmark = pytest.mark.django_db


def client_for(library: Library, name: str) -> Client:
    client = Client()
    client.force_login(library.users[name])
    return client


def test_the_picker_lists_only_what_the_user_may_use_filtered_by_text_and_tag(library: Library) -> None:
    sue, hal = client_for(library, "sue"), client_for(library, "hal")
    page = sue.get("/prompts/picker/").content.decode()
    assert "Sales pitch" in page and "Summarise" in page and "My notes" in page
    page = hal.get("/prompts/picker/").content.decode()
    assert "Sales pitch" not in page and "My notes" not in page and "Summarise" in page
    assert "Sales pitch" not in sue.get("/prompts/picker/?q=summ").content.decode()
    assert "Summarise" in sue.get("/prompts/picker/?q=summ").content.decode()
    tagged = sue.get("/prompts/picker/?q=%23sales").content.decode()
    assert "Sales pitch" in tagged and "Summarise" not in tagged
    assert "No prompt matches" in sue.get("/prompts/picker/?q=zzz").content.decode()


def test_favourites_come_first_in_the_picker(library: Library) -> None:
    sue = client_for(library, "sue")
    summarise = library.prompts["company"]
    assert sue.post(f"/prompts/{summarise.uuid}/favorite/").status_code == 302
    assert PromptFavorite.objects.filter(user=library.users["sue"], prompt=summarise).exists()
    page = sue.get("/prompts/picker/").content.decode()
    assert page.index("Summarise") < page.index("My notes") < page.index("Sales pitch")
    assert "★ Summarise" in page
    assert sue.get("/prompts/?favorites=1").content.decode().count("/prompts/" + str(summarise.uuid)) >= 1
    assert "Sales pitch" not in sue.get("/prompts/?favorites=1").content.decode()


def test_the_variables_form_and_the_rendered_texts(library: Library) -> None:
    sue, prompt = client_for(library, "sue"), library.prompts["groups"]
    form = sue.get(f"/prompts/{prompt.uuid}/use/").content.decode()
    assert 'name="var_tone"' in form and '<option value="casual">' in form and 'name="var_product"' in form
    ok = sue.post(f"/prompts/{prompt.uuid}/render/", {"var_tone": "casual", "var_product": "{{tone}}"})
    assert ok.status_code == 200
    assert ok.json()["system"] == "You write casual pitches."
    assert ok.json()["user"] == "Pitch {{tone}} to ."  # the value is text, never expanded again
    bad = sue.post(f"/prompts/{prompt.uuid}/render/", {"var_tone": "rude", "var_product": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tone"
    missing = sue.post(f"/prompts/{prompt.uuid}/render/", {"var_tone": "formal"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "product"
    prompt.refresh_from_db()
    assert prompt.use_count == 1
    hal = client_for(library, "hal")
    assert hal.get(f"/prompts/{prompt.uuid}/use/").status_code == 404
    assert hal.post(f"/prompts/{prompt.uuid}/render/", {"var_product": "x"}).status_code == 404


def test_the_library_page_searches_and_filters_by_tag_and_scope(library: Library) -> None:
    sue = client_for(library, "sue")
    page = sue.get("/prompts/").content.decode()
    assert "data-prompt-picker" in page and "Sales pitch" in page and "#writing" in page
    assert "Sales pitch" not in sue.get("/prompts/?tag=writing").content.decode()
    assert "Summarise" not in sue.get("/prompts/?q=pitch").content.decode()
    assert "Summarise" not in sue.get("/prompts/?scope=groups").content.decode()
    assert "<script>" not in sue.get("/prompts/?q=<script>").content.decode()


def test_descriptions_are_sanitised_markdown(library: Library) -> None:
    prompt = library.prompts["company"]
    prompt.description = "**Use** it\n<img src=https://evil.example/x.png onerror=alert(1)>\n\n![i](https://evil.example/i.png)"
    prompt.save()
    page = client_for(library, "olga").get(f"/prompts/{prompt.uuid}/").content.decode()
    assert "<strong>Use</strong> it" in page  # markdown, rendered
    assert "&lt;img src=https://evil.example/x.png" in page  # raw HTML shown as text
    assert "<img src=https://evil" not in page and '<img src="https://evil' not in page  # no external image


def test_creating_a_prompt_from_the_form(library: Library) -> None:
    hal = client_for(library, "hal")
    response = hal.post("/prompts/new/", {"title": "Leave request", "scope": "personal", "system": "",
                                          "user_template": "Ask for {{days | type:number}} days off", "params": ""})  # fmt: skip
    assert response.status_code == 302
    prompt = Prompt.objects.get(title="Leave request")
    assert prompt.owner == library.users["hal"] and prompt.published_version is None
    # Hal is not an editor of sales: the department is not offered, and a forged choice is refused.
    assert hal.post("/prompts/new/", {"title": "X", "scope": "groups", "groups": [library.sales.pk],
                                      "user_template": "x"}).status_code == 200  # fmt: skip
    assert not Prompt.objects.filter(title="X").exists()


def test_save_from_the_playground_and_load_into_it(library: Library) -> None:
    sue = client_for(library, "sue")
    chat = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "Translate {{text}}"}]  # fmt: skip
    response = sue.post("/prompts/from-playground/", {"system": "You translate.", "messages": json.dumps(chat),
                                                      "model": "gpt-4o", "params": '{"temperature": 0}',
                                                      "title": "Translator"})  # fmt: skip
    prompt = Prompt.objects.get(title="Translator")
    assert response.status_code == 302 and response["Location"] == f"/prompts/{prompt.uuid}/edit/"
    assert (
        prompt.scope == "personal"
        and prompt.owner == library.users["sue"]
        and prompt.published_version is None
    )
    loaded = sue.get(f"/prompts/{prompt.uuid}/playground.json").json()
    assert loaded["system"] == "You translate." and loaded["model"] == "gpt-4o"
    assert loaded["messages"] == [{"role": "user", "content": "Translate {{text}}"}]
    assert loaded["params"] == {"temperature": 0} and loaded["variables"][0]["name"] == "text"
    htmx = sue.post(
        "/prompts/from-playground/", {"system": "S", "messages": "[]"}, headers={"HX-Request": "true"}
    )
    assert htmx.status_code == 204 and htmx["HX-Redirect"].endswith("/edit/")
    assert sue.post("/prompts/from-playground/", {"messages": "not json"}).status_code == 400
    assert sue.post("/prompts/from-playground/", {"messages": "[]"}).status_code == 400
    assert client_for(library, "hal").get(f"/prompts/{prompt.uuid}/playground.json").status_code == 404


def test_the_playground_pages_own_form_is_saved_too(library: Library) -> None:
    """The playground's "Save to prompt library" posts its form fields as they are (portal/playground.html)."""
    sue = client_for(library, "sue")
    form = {"system": "You review code.", "msg-role": ["user", "assistant", "user"],
            "msg-content": ["hello", "hi", "Review {{diff | type:textarea}}"], "p0-model": "gpt-4o-mini",
            "p0-temperature": "0.2", "p0-max_tokens": "300", "p0-top_p": "", "p0-stop": "END\n\nSTOP",
            "p0-json": "1", "p1-model": "gpt-4o"}  # fmt: skip
    response = sue.post("/prompts/from-playground/", form)
    assert response.status_code == 302
    prompt = Prompt.objects.get(owner=library.users["sue"], title="From the playground")
    version = prompt.latest_version()
    assert version is not None and version.user_template == "Review {{diff | type:textarea}}"
    assert version.system == "You review code." and version.model == "gpt-4o-mini"
    assert version.params == {"temperature": 0.2, "max_tokens": 300, "stop": ["END", "STOP"],
                              "response_format": {"type": "json_object"}}  # fmt: skip
    assert sue.post("/prompts/from-playground/", {**form, "p0-temperature": "hot"}).status_code == 400


def test_anonymous_users_are_sent_to_sign_in(library: Library) -> None:
    response = Client().get("/prompts/picker/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
