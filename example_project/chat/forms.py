from __future__ import annotations

from django import forms
from django.utils.text import slugify

from .models import Room


class RoomForm(forms.ModelForm):
    """A new room: the name is what people see, the slug (from the name) names its URLs and group."""

    class Meta:
        model = Room
        fields = ("name",)

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        slug = slugify(name)[:50].strip("-")
        if not slug:
            raise forms.ValidationError("Use at least one letter or digit (A-Z, 0-9).")
        if Room.objects.filter(slug=slug).exists():
            raise forms.ValidationError("A room with this name already exists.")
        self.instance.slug = slug
        return name
