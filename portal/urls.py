from __future__ import annotations

from django.urls import path

from portal import catalogue, chat, playground, views

app_name = "portal"

urlpatterns = [
    path("", views.home, name="home"),
    path("usage/", views.my_usage, name="my_usage"),
    # The app catalogue: the list, a registered app's page and its uploaded icon.
    path("apps/", catalogue.catalogue, name="catalogue"),
    path("apps/<slug:slug>/", catalogue.app_detail, name="app_detail"),
    path("apps/<slug:slug>/icon", catalogue.app_icon, name="app_icon"),
    # Chat: pages and htmx actions (sync), the answer stream (async, server-sent events).
    path("chat/", chat.index, name="chat"),
    path("chat/new/", chat.create, name="chat_create"),
    path("chat/c/<int:pk>/", chat.conversation_page, name="chat_conversation"),
    path("chat/c/<int:pk>/send/", chat.send, name="chat_send"),
    path("chat/c/<int:pk>/settings/", chat.update_settings, name="chat_settings"),
    path("chat/c/<int:pk>/rename/", chat.rename, name="chat_rename"),
    path("chat/c/<int:pk>/pin/", chat.pin, name="chat_pin"),
    path("chat/c/<int:pk>/delete/", chat.delete, name="chat_delete"),
    path("chat/c/<int:pk>/export.<str:fmt>", chat.export, name="chat_export"),
    path("chat/c/<int:pk>/m/<int:mid>/", chat.message_fragment, name="chat_message"),
    path("chat/c/<int:pk>/m/<int:mid>/stream/", chat.stream, name="chat_stream"),
    path("chat/c/<int:pk>/m/<int:mid>/regenerate/", chat.regenerate, name="chat_regenerate"),
    path("chat/c/<int:pk>/m/<int:mid>/edit/", chat.edit, name="chat_edit"),
    # Playground: the page, one panel's stream, the "view code" fragment.
    path("playground/", playground.page, name="playground"),
    path("playground/run/", playground.run, name="playground_run"),
    path("playground/code/", playground.code, name="playground_code"),
]
