"""Django looks for `management/commands/` in every installed app."""
