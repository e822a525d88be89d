from django.contrib import admin

from .models import Message, Room


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "created")
    prepopulated_fields = {"slug": ("name",)}  # noqa: RUF012 - the admin API


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("created", "room", "author", "text")
    list_filter = ("room",)
    list_select_related = ("room", "author")
