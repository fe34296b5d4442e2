"""Past-tense facts of the alerts domain; the web layer renders and pushes them."""

from blinker import Namespace

alert_signals = Namespace()

# sender: None; kwarg user_ids: the users who were just given an in-app notification
notifications_created = alert_signals.signal("notifications-created")
