from django.apps import AppConfig


class RawWSConfig(AppConfig):
    name = "django_rawws"
    verbose_name = "django-rawws"
