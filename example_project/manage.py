#!/usr/bin/env python
"""Run the example project's commands: ``python manage.py runws`` serves its WebSockets."""

import os
import sys
from pathlib import Path


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    # Run from a clone without installing: make the repository's django_rawws importable.
    repository = Path(__file__).resolve().parent.parent
    if (repository / "django_rawws").is_dir() and str(repository) not in sys.path:
        sys.path.append(str(repository))
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
