"""{{ project_id }}: {{ description }}"""
