"""The app config of `videos`."""

# mypy: disallow-subclassing-any=False
# (Django ships no type hints: its base classes are Any to mypy.)

from django.apps import AppConfig


class VideosConfig(AppConfig):
    name = "videos"
