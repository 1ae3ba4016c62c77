"""Folder names of a saved CXRPipeline, in one place for every module that reads or writes one."""

#: Sub-folder of each model part in a saved model directory (the layout CXRPipeline writes).
PART_FOLDERS = {"text_encoder": "text_encoder", "autoencoder": "autoencoder", "denoiser": "denoiser"}
