"""The built-in world: fictitious people, a trained tokenizer, and tiny target/oracle models.

    world = get_world("small", seed=0)                        # pure, fast, deterministic
    models = build_world_models("small", 0, "forget10")      # trains once, then reuses the cache
"""

from obliviate.world.build import WorldModels, build_world_models, obliviate_home
from obliviate.world.config import GENERATOR_VERSION, PRESETS, Preset, TrainRecipe, WorldConfig
from obliviate.world.generator import ATTRIBUTES, Fact, Person, World, get_world

__all__ = [
    "ATTRIBUTES", "GENERATOR_VERSION", "PRESETS", "Fact", "Person", "Preset", "TrainRecipe", "World",
    "WorldConfig", "WorldModels", "build_world_models", "get_world", "obliviate_home",
]
