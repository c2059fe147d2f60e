"""The pack's tests, by tier: unit/ (engines, CLI), node/ (nodes in-process), server/ (a real ComfyUI), browser/.

A package so that every tier imports the shared helpers as ``tests.helpers``.
"""
