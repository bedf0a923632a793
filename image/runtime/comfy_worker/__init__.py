"""ComfyUI runtime of the SteadyDancer image: the RunPod serverless handler and the helpers start.sh runs.

Modules: config (settings), validation (job input), inputs (input files), comfy_client (HTTP API), follower
(websocket), graph (node classes, validation errors), outputs (history files), upload (base64 / S3), handler (the
job), preflight (GPU check), model_paths (extra_model_paths.yaml). See image/runtime/README.md for the contract.
"""

__version__ = "1.0"
