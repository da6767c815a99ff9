"""One router per resource of CONTRACT section 4; api.app includes them all."""
