"""A module that is not a urlconf: no urlpatterns."""
