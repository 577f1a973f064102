# Stands for NVIDIA's model config (cosmos-transfer1: cosmos_transfer1/diffusion/config/transfer/config.py).
# NVIDIA's code finds it by this path relative to the working directory
# (utils/config_helper.py get_config_module: assert os.path.isfile(config_file)).
