"""zoo's built-in components, each an ordinary plugin module written as a third party would write one."""
