"""What hookdoctor hands back: Grad-CAM and attention specs, rollout, and paste-ready snippets."""
