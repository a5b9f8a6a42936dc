"""What runs the models and the jobs underneath: Ray Serve (and its HTTP ingress), the warm interpreter that
forks training jobs, and the one module that touches libraries' private APIs."""
