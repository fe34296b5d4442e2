"""The schedule view: every enabled job's fires over the next days."""

from flask import Blueprint

bp = Blueprint("schedule", __name__)
