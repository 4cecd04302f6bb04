"""DreamPolish wire protocol: pure Python (msgpack + numpy), vendored by the Blender add-on.

Imports inside this package are relative so that the add-on can vendor it as its own subpackage.
"""

PROTOCOL_VERSION = "1.2"
"""major.minor: a different major is refused at the handshake; minors are compatible."""
