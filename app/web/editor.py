"""The job editor: create, edit, reorder steps, versions (routes under /jobs/<id>/...)."""

from flask import Blueprint

bp = Blueprint("editor", __name__)
