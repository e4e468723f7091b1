"""Overlap schedules: how one device interleaves compute and all-to-all within a step."""
