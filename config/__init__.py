"""Settings and the plans, dashboards and server configs shipped with the controller."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
PLANS_DIR = CONFIG_DIR / "plans"
