"""Deterministic test media (see aim_vllm.media)."""

from aim_vllm.media import jpeg_video_data_url, png_data_url, random_image, random_video

image, video_frames = random_image, random_video

__all__ = ["image", "jpeg_video_data_url", "png_data_url", "video_frames"]
