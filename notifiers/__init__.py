"""Built-in notifier plugins (entry-point group ``connection_key.notifiers``), shaped like third-party ones.

* ``fcm`` (:mod:`notifiers.fcm.plugin`): Firebase Cloud Messaging HTTP v1, for ``android`` devices.
* ``apns`` (:mod:`notifiers.apns.plugin`): the Apple Push Notification service provider API over HTTP/2
  with token (JWT) authentication, for ``ios`` devices.

Each registers nothing when its ``[plugins.config.<name>]`` table is absent, empty or ``enabled = false``.
"""
