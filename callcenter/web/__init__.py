"""The HTTP edge shared by every front door: the app factory, typed app keys, JSON helpers."""
