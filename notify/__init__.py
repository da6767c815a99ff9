"""The notifier: tells people and systems about alerts, with escalation (`python -m notify`)."""
