################################################################################
#
# icvq-agent
#
################################################################################

# Must equal [project] version in pyproject.toml (tests/install checks it).
ICVQ_AGENT_VERSION = 0.1.0
# This BR2_EXTERNAL tree is the buildroot/ directory of the icvq repository;
# the package source is the repository root, rsynced (VCS dirs excluded).
ICVQ_AGENT_SITE = $(BR2_EXTERNAL_ICVQ_PATH)/..
ICVQ_AGENT_SITE_METHOD = local
# Keep developer leftovers out of the rsynced build directory.
ICVQ_AGENT_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude=.venv --exclude=.tox --exclude=.pytest_cache \
	--exclude=.mypy_cache --exclude=.ruff_cache --exclude=/dist
# pyproject.toml: build-backend = "hatchling.build"
ICVQ_AGENT_SETUP_TYPE = hatch
ICVQ_AGENT_DEPENDENCIES = host-python-hatchling
ICVQ_AGENT_LICENSE = Apache-2.0
ICVQ_AGENT_LICENSE_FILES = LICENSE

define ICVQ_AGENT_USERS
	icvq -1 icvq -1 * /var/lib/icvq - video,input,dialout icvq telemetry agent
endef

# agent.toml may hold broker credentials: readable by group icvq only.
define ICVQ_AGENT_PERMISSIONS
	/etc/icvq/agent.toml f 0640 0 icvq - - - - -
	/etc/icvq/agent.d d 0750 0 icvq - - - - -
endef

define ICVQ_AGENT_INSTALL_CONFIG
	$(INSTALL) -D -m 0640 $(@D)/config/agent.toml \
		$(TARGET_DIR)/etc/icvq/agent.toml
	$(INSTALL) -d -m 0750 $(TARGET_DIR)/etc/icvq/agent.d
endef
ICVQ_AGENT_POST_INSTALL_TARGET_HOOKS += ICVQ_AGENT_INSTALL_CONFIG

define ICVQ_AGENT_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/systemd/icvq-agent.service \
		$(TARGET_DIR)/usr/lib/systemd/system/icvq-agent.service
	$(INSTALL) -D -m 0644 $(@D)/systemd/icvq-agent.preset \
		$(TARGET_DIR)/usr/lib/systemd/system-preset/50-icvq-agent.preset
	$(INSTALL) -D -m 0644 $(@D)/systemd/icvq.sysusers \
		$(TARGET_DIR)/usr/lib/sysusers.d/icvq.conf
	$(INSTALL) -D -m 0644 $(@D)/systemd/icvq.tmpfiles \
		$(TARGET_DIR)/usr/lib/tmpfiles.d/icvq.conf
endef

# The DRM/KMS helper (icvq-drm-sampler, a console script of this package) and
# its hardened unit; the user comes from its sysusers.d file at boot.
define ICVQ_AGENT_INSTALL_DRM_SAMPLER
	$(INSTALL) -D -m 0644 $(@D)/systemd/icvq-drm-sampler.service \
		$(TARGET_DIR)/usr/lib/systemd/system/icvq-drm-sampler.service
	$(INSTALL) -D -m 0644 $(@D)/systemd/icvq-drm-sampler.sysusers \
		$(TARGET_DIR)/usr/lib/sysusers.d/icvq-drm.conf
	$(INSTALL) -D -m 0644 $(@D)/systemd/dropins/drm-sampler.conf \
		$(TARGET_DIR)/usr/lib/systemd/system/icvq-agent.service.d/drm-sampler.conf
endef
ifeq ($(BR2_PACKAGE_ICVQ_AGENT_DRM_SAMPLER),y)
ICVQ_AGENT_POST_INSTALL_TARGET_HOOKS += ICVQ_AGENT_INSTALL_DRM_SAMPLER
endif

$(eval $(python-package))
