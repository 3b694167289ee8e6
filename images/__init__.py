"""Golden images: recipes, the builder (debootstrap rootfs, Debian kernel, initramfs), the store.

    store = ImageStore(data_dir)
    image = build("base", store)        # or store.get("base") for the newest complete build
    image.rootfs, image.kernel, image.initrd
"""

from .builder import BUILDER_VERSION, build
from .errors import BuildError, ImageError, ImageNotBuilt, RecipeError, UnknownImage
from .recipe import Recipe, load_recipe
from .store import BuiltImage, ImageStore

__all__ = [
    "BUILDER_VERSION",
    "BuildError",
    "BuiltImage",
    "ImageError",
    "ImageNotBuilt",
    "ImageStore",
    "Recipe",
    "RecipeError",
    "UnknownImage",
    "build",
    "load_recipe",
]
