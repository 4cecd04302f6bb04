"""Helpers the test suites share: test pipelines, recording contexts, meshes, images, validators.

Test modules import from here (`from tests.support.pipelines import running_backend`), never from another
test module; fixtures live in each suite's conftest.py. Nothing here is collected as a test. Modules that
need torch or bpy say so in their docstring: tests/conftest.py and the add-on suite (Blender's Python,
no torch) must not import them.
"""
