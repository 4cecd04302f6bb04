"""DreamPolish compute backend: server, job system and the DreamPolish pipeline."""
