"""The chat's pages: plain Django views, served on the same port as the WebSockets by ``runws``."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from .demo import demo_password, demo_users
from .forms import RoomForm
from .models import MAX_MESSAGE_LENGTH, Room


class ChatLoginView(LoginView):
    """Django's login view, with the demo users listed on the page."""

    template_name = "chat/login.html"
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["demo_users"] = demo_users()
        context["demo_password"] = demo_password()
        return context


@login_required
def room_list(request: HttpRequest) -> HttpResponse:
    """The rooms; a POST creates one and opens it."""
    if request.method == "POST":
        form = RoomForm(request.POST)
        if form.is_valid():
            room = form.save()
            return redirect(room)
    else:
        form = RoomForm()
    return render(request, "chat/room_list.html", {"rooms": Room.objects.all(), "form": form})


@login_required
def room(request: HttpRequest, slug: str) -> HttpResponse:
    """A room: its history from the database, then live over ``/ws/rooms/<slug>/``."""
    room = get_object_or_404(Room, slug=slug)
    history = room.latest_messages(settings.CHAT_HISTORY)
    config = {
        "room": room.slug,
        "user": request.user.get_username(),
        # The template renders the absolute URL with {% ws_url %} (data-ws-url); this path is
        # room.js's fallback on a page without it.
        "wsPath": reverse("room", kwargs={"slug": room.slug}, urlconf=settings.RAWWS["URLCONF"]),
        "lastId": history[-1].id if history else 0,
        "maxLength": MAX_MESSAGE_LENGTH,
    }
    return render(
        request,
        "chat/room.html",
        {"room": room, "history": history, "config": config, "rooms": Room.objects.all()},
    )
