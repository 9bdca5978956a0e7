"""Fixtures shared by every test layer."""

from __future__ import annotations
