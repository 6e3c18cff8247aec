"""Prompt families with role positions, and the evaluation of the shipped model."""
