//! Channel names: namespace, private (`$`) and user-limited (`#`) parts.

/// The parts of a channel name that decide which options and permissions apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelName<'a> {
    pub full: &'a str,
    /// Empty for channels without a namespace.
    pub namespace: &'a str,
    /// Starts with `$`: subscribing needs a subscription token.
    pub private: bool,
    /// The user ids after `#`, when the channel is user-limited.
    pub allowed_users: Option<Vec<&'a str>>,
}

pub const PRIVATE_PREFIX: char = '$';
pub const NAMESPACE_BOUNDARY: char = ':';
pub const USER_BOUNDARY: char = '#';
pub const USER_SEPARATOR: char = ',';

impl<'a> ChannelName<'a> {
    pub fn parse(full: &'a str) -> Self {
        let private = full.starts_with(PRIVATE_PREFIX);
        let unprefixed = full.strip_prefix(PRIVATE_PREFIX).unwrap_or(full);
        let namespace = match unprefixed.split_once(NAMESPACE_BOUNDARY) {
            Some((ns, _)) => ns,
            None => "",
        };
        let allowed_users = full
            .rsplit_once(USER_BOUNDARY)
            .map(|(_, users)| users.split(USER_SEPARATOR).filter(|u| !u.is_empty()).collect());
        Self { full, namespace, private, allowed_users }
    }

    /// Whether `user` may subscribe to this user-limited channel (always true for other channels).
    pub fn user_allowed(&self, user: &str) -> bool {
        match &self.allowed_users {
            Some(users) => !user.is_empty() && users.contains(&user),
            None => true,
        }
    }
}

/// Why a channel name is refused before any namespace rule is looked at.
pub fn validate(name: &str, max_length: usize) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("channel name is empty");
    }
    if name.len() > max_length {
        return Err("channel name is too long");
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("channel name contains whitespace or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_namespaced_private_and_user_limited() {
        let c = ChannelName::parse("news");
        assert_eq!(c.namespace, "");
        assert!(!c.private);
        assert!(c.allowed_users.is_none());

        let c = ChannelName::parse("chat:room1");
        assert_eq!(c.namespace, "chat");

        let c = ChannelName::parse("$secret:room");
        assert!(c.private);
        assert_eq!(c.namespace, "secret");

        let c = ChannelName::parse("dialog#42,43");
        assert!(c.user_allowed("42"));
        assert!(c.user_allowed("43"));
        assert!(!c.user_allowed("44"));
        assert!(!c.user_allowed(""));
    }

    #[test]
    fn validation() {
        assert!(validate("", 255).is_err());
        assert!(validate(&"a".repeat(256), 255).is_err());
        assert!(validate("has space", 255).is_err());
        assert!(validate("ok:channel#1", 255).is_ok());
    }
}
