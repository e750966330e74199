"""Settings and the plans, dashboards and server configs shipped with the controller."""

from pathlib import Path

PLANS_DIR = Path(__file__).resolve().parent / "plans"
