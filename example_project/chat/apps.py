from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .demo import create_demo_data

        # After the chat's own tables exist: sender=self fires once per migrate.
        post_migrate.connect(create_demo_data, sender=self, dispatch_uid="chat.create_demo_data")
