"""Template tag libraries of django-rawws (``{% load rawws %}``)."""
