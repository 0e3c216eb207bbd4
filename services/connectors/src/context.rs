//! Account and deal context: besides its contact, an activity is associated with the
//! contact's company (account, organisation) and, by the tenant's `deal_rule`, one of the
//! contact's open deals. Each connector reads a contact's [`ContactContext`] its CRM's way;
//! [`choose`] is the rule, written once; the writer caches contexts per tenant in Redis.

use crm_common::tenants::DealRule;
use serde::{Deserialize, Serialize};

/// A contact's company and open deals, as its CRM holds them now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactContext {
    /// The contact's primary company (HubSpot's primary association, Salesforce's
    /// Contact.AccountId, Zoho's Account_Name, Pipedrive's person org_id).
    #[serde(default)]
    pub company: Option<String>,
    /// The contact's deals that are not closed, each with when it last changed.
    #[serde(default)]
    pub open_deals: Vec<OpenDeal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenDeal {
    pub id: String,
    /// Epoch ms of the deal's last change (the tie-break for `most_recent_open`).
    pub updated_ms: i64,
}

/// What an activity is associated with besides its contacts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    pub company: Option<String>,
    pub deal: Option<String>,
    /// Why no deal was chosen where the contact has open deals (for the audit).
    pub no_deal_because: Option<String>,
}

/// The company and the deal for an activity with this contact, by the tenant's rule.
pub fn choose(ctx: &ContactContext, rule: DealRule) -> Context {
    let company = ctx.company.clone();
    let n = ctx.open_deals.len();
    let (deal, no_deal_because) = match rule {
        _ if n == 0 => (None, None),
        DealRule::None => (None, Some("the tenant's deal_rule is none".to_string())),
        DealRule::SingleOpen if n == 1 => (Some(ctx.open_deals[0].id.clone()), None),
        DealRule::SingleOpen => (None, Some(format!("the contact has {n} open deals and the rule is single_open"))),
        DealRule::MostRecentOpen => {
            // The latest change wins; equal times go to the highest id, so every replica
            // and every replay picks the same deal.
            let d = ctx.open_deals.iter().max_by(|a, b| a.updated_ms.cmp(&b.updated_ms).then_with(|| a.id.cmp(&b.id)));
            (d.map(|d| d.id.clone()), None)
        }
    };
    Context { company, deal, no_deal_because }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(deals: &[(&str, i64)]) -> ContactContext {
        ContactContext {
            company: Some("co1".into()),
            open_deals: deals.iter().map(|(id, t)| OpenDeal { id: id.to_string(), updated_ms: *t }).collect(),
        }
    }

    #[test]
    fn each_rule_picks_its_deal() {
        assert_eq!(choose(&ctx(&[("d1", 5)]), DealRule::SingleOpen).deal.as_deref(), Some("d1"));
        let two = ctx(&[("d1", 5), ("d2", 9)]);
        let c = choose(&two, DealRule::SingleOpen);
        assert_eq!((c.company.as_deref(), c.deal.as_deref()), (Some("co1"), None));
        assert!(c.no_deal_because.unwrap().contains("2 open deals"));
        assert_eq!(choose(&two, DealRule::MostRecentOpen).deal.as_deref(), Some("d2"));
        assert_eq!(choose(&ctx(&[("d1", 5), ("d3", 5)]), DealRule::MostRecentOpen).deal.as_deref(), Some("d3"), "ties: highest id");
        assert_eq!(choose(&two, DealRule::None).deal, None);
        assert_eq!(choose(&ctx(&[]), DealRule::SingleOpen), Context { company: Some("co1".into()), deal: None, no_deal_because: None });
    }
}
