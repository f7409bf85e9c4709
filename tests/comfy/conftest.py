"""ComfyUI is not installed here: the node's tests run against stand-ins of the ``comfy`` modules it touches."""

from tests.comfy import standins

standins.install()
