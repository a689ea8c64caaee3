include $(sort $(wildcard $(BR2_EXTERNAL_ICVQ_PATH)/package/*/*.mk))
