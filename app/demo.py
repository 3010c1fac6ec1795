"""Demo users for the README walkthrough and benchmarks (development only)."""

from __future__ import annotations

import uuid

from app.domain.quiz import ConsentPreference, ProfileInput, PromptPair

__all__ = ["DEMO_USERS", "demo_user_id"]


def demo_user_id(name: str) -> uuid.UUID:
    """Stable id of demo user ``name`` (so the walkthrough's ids never change)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"connection-key-demo:{name}")


DEMO_USERS: dict[str, ProfileInput] = {
    "alice": ProfileInput(
        display_name="Alice",
        bio="Botanist, slow cook, terrible at karaoke.",
        prompts=[
            PromptPair("My ideal Sunday", "Repotting my fern collection and making a huge pot of soup"),
            PromptPair("A fact that surprises people", "I once rowed across a lake at midnight for a bet"),
            PromptPair("I'm looking for", "Someone who asks good questions and listens to the answers"),
        ],
        consent_preferences=[
            ConsentPreference("pace", "I like to chat for a week before meeting in person"),
            ConsentPreference("first date", "First dates in a public place, daytime please"),
            ConsentPreference("photos", "No photos beyond what is on my profile until we have met"),
        ],
        locale="en",
    ),
    "bob": ProfileInput(
        display_name="Bob",
        bio="Cyclist and amateur astronomer.",
        prompts=[
            PromptPair("My ideal Sunday", "A long bike ride to the coast and fish and chips on the pier"),
            PromptPair("A fact that surprises people", "I have named three asteroids after my grandmothers"),
            PromptPair("I'm looking for", "Someone curious who does not mind 4am stargazing trips"),
        ],
        consent_preferences=[
            ConsentPreference("contact", "Please text before calling, every time"),
            ConsentPreference("pace", "I would rather we video call once before meeting"),
            ConsentPreference("topics", "I do not talk about exes on first dates"),
        ],
        locale="en",
    ),
    # A third person, so the walkthrough's wrong-answer flow has a pair that is not unlocked yet.
    "carol": ProfileInput(
        display_name="Carol",
        bio="Ceramicist who restores old bicycles.",
        prompts=[
            PromptPair("My ideal Sunday", "Throwing bowls on the wheel all morning, then a swim in the sea"),
            PromptPair("A fact that surprises people", "I grew up on a houseboat on the Thames"),
            PromptPair("I'm looking for", "Someone patient who likes making things with their hands"),
        ],
        consent_preferences=[
            ConsentPreference("pace", "I prefer a few weeks of messages before meeting"),
            ConsentPreference("contact", "Messages only, no voice notes please"),
            ConsentPreference("first date", "Somewhere quiet where we can talk, like a cafe"),
        ],
        locale="en",
    ),
}
